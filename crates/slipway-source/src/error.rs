use std::path::PathBuf;

use slipway_spec::FailureCode;

/// What went wrong fetching a source or making a build context. Each message says plainly
/// what the user has to fix.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("repository {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error(
        "repository {url} is a path on the daemon's host; local repositories are refused unless the daemon runs with --allow-local-sources"
    )]
    LocalSource { url: String },
    #[error("the credential scope \"{scope}\" is invalid: {reason}")]
    InvalidScope { scope: String, reason: String },
    #[error("cannot use the CA certificates in {path}: {message}")]
    CaCerts { path: PathBuf, message: String },
    #[error("repository {url} refused authentication: {message}")]
    AuthRefused { url: String, message: String },
    #[error("branch \"{branch}\" does not exist in repository {url}")]
    BranchMissing { url: String, branch: String },
    #[error("fetching {url} took longer than {seconds} s and was stopped")]
    Timeout { url: String, seconds: u64 },
    #[error("fetching {url} was canceled")]
    Canceled { url: String },
    #[error("source_dir \"{path}\" does not exist in commit {commit}")]
    SourceDirMissing { path: String, commit: String },
    #[error("source_dir \"{path}\" in commit {commit} is a file, not a directory")]
    SourceDirNotADirectory { path: String, commit: String },
    #[error("dockerfile_path \"{path}\" does not exist in commit {commit}")]
    DockerfileMissing { path: String, commit: String },
    #[error(
        "{field} \"{path}\" is a symbolic link in commit {commit}; it must be a real file or directory of the repository"
    )]
    Symlink {
        field: &'static str,
        path: String,
        commit: String,
    },
    #[error("\"{path}\" must stay inside the repository")]
    OutsideRepository { path: String },
    #[error("the git mirror at {path} is unusable")]
    Mirror {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("reading commit {commit} failed")]
    Read {
        commit: String,
        #[source]
        source: git2::Error,
    },
    #[error("writing the build context failed")]
    Archive(#[source] std::io::Error),
    #[error("the git worker stopped unexpectedly")]
    Worker(#[source] tokio::task::JoinError),
}

impl SourceError {
    /// The stable code a deployment that fails with this error ends with: what could not be
    /// fetched is [`FailureCode::SourceFetchFailed`], what was fetched but cannot be built as
    /// the spec says is [`FailureCode::SourceInvalid`].
    pub fn code(&self) -> FailureCode {
        match self {
            SourceError::Unreachable { .. }
            | SourceError::LocalSource { .. }
            | SourceError::InvalidScope { .. }
            | SourceError::CaCerts { .. }
            | SourceError::AuthRefused { .. }
            | SourceError::BranchMissing { .. }
            | SourceError::Mirror { .. }
            | SourceError::Read { .. }
            | SourceError::Worker(_) => FailureCode::SourceFetchFailed,
            SourceError::Timeout { .. } => FailureCode::Timeout,
            SourceError::Canceled { .. } => FailureCode::Canceled,
            SourceError::SourceDirMissing { .. }
            | SourceError::SourceDirNotADirectory { .. }
            | SourceError::DockerfileMissing { .. }
            | SourceError::Symlink { .. }
            | SourceError::OutsideRepository { .. } => FailureCode::SourceInvalid,
            // Making the build context is the build's first step.
            SourceError::Archive(_) => FailureCode::BuildFailed,
        }
    }
}
