//! Slipway's source fetcher: a bare git mirror per repository, and build contexts made from
//! the git tree of one commit.
//!
//! Promises:
//! - Only the configured branch is fetched, incrementally, into `ROOT/<name>-<hash>.git`; the
//!   working files of the repository are never checked out.
//! - Each fetch resolves the branch head to a full commit hash; a build context is made from
//!   exactly that commit's tree, so a rebuild never ships stale or uncommitted files.
//! - A build context contains `source_dir` of that tree only (plus the Dockerfile when
//!   `dockerfile_path` lies outside it), filtered by its `.dockerignore` (Docker's syntax,
//!   `!` exceptions included), with file modes and symlinks kept and timestamps set to the
//!   commit's time, so identical trees give identical contexts. It is made from git objects
//!   directly: nothing is checked out.
//! - A credential goes only where its scope says ([`credentials`]): tokens over `https://`
//!   to their host (and path prefix), SSH keys to their hosts, an app's own token to its own
//!   repository's host; never over plain `http://`, never to another host after a redirect.
//! - A repository that is a path on this machine (or `file://`) is refused unless
//!   [`SourceCache::allow_local_sources`] says otherwise.
//! - Fetches of one repository are serialized; fetches of different repositories run in
//!   parallel. A fetch stops at its deadline or when its cancellation token fires.
//!
//! All git work runs on tokio's blocking pool; the futures here are cancel-safe in that
//! dropping them leaves the mirror consistent (git2 writes refs atomically).

mod context;
pub mod credentials;
mod dockerignore;
mod error;
mod fetch;

pub use context::BuildContext;
pub use credentials::{Credentials, GitCredentials, Scope};
pub use dockerignore::DockerIgnore;
pub use error::SourceError;
pub use fetch::{Fetched, SourceCache};
