use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::{AutotagOption, ErrorCode, FetchOptions, RemoteCallbacks, Repository};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::SourceError;
use crate::context::{self, BuildContext};

/// The mirrors of every repository Slipway builds from.
///
/// The cache's directory belongs to one process: a lock file that git left in a mirror is
/// taken for the remains of a fetch that was killed, and removed before this process first
/// fetches into that mirror.
#[derive(Debug)]
pub struct SourceCache {
    root: PathBuf,
    fetch_timeout: Duration,
    /// Per mirror: held while a fetch writes to it; true once this process has swept the
    /// lock files an earlier process left in it.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<bool>>>>,
}

/// What the fetcher may present to a private remote.
#[derive(Clone, Default)]
pub struct Credentials {
    /// For `https://` remotes: a token, sent as the password (with the URL's user name, else
    /// `x-access-token`, which GitHub, GitLab and Gitea accept).
    pub token: Option<String>,
    /// For `ssh://` and scp-style remotes: a private key file; without it, the SSH agent.
    pub ssh_key: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "[secret]"))
            .field("ssh_key", &self.ssh_key)
            .finish()
    }
}

impl Credentials {
    /// The credential to offer for what the remote allows.
    fn offer(
        &self,
        username: Option<&str>,
        allowed: git2::CredentialType,
    ) -> Result<git2::Cred, git2::Error> {
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            let user = username.unwrap_or("git");
            return match &self.ssh_key {
                Some(key) => git2::Cred::ssh_key(user, None, key, None),
                None => git2::Cred::ssh_key_from_agent(user),
            };
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            return match &self.token {
                Some(token) => {
                    git2::Cred::userpass_plaintext(username.unwrap_or("x-access-token"), token)
                }
                None => Err(git2::Error::from_str(
                    "authentication required: the remote asks for credentials and no token is configured",
                )),
            };
        }
        if allowed.contains(git2::CredentialType::USERNAME) {
            return git2::Cred::username(username.unwrap_or("git"));
        }
        if allowed.contains(git2::CredentialType::DEFAULT) {
            return git2::Cred::default();
        }
        Err(git2::Error::from_str(
            "authentication required: the remote asks for credentials of a kind Slipway cannot offer",
        ))
    }
}

/// A branch head fetched into a mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub url: String,
    pub branch: String,
    /// The full commit hash the branch pointed at.
    pub commit: String,
    /// The bare mirror holding it.
    pub mirror: PathBuf,
}

impl SourceCache {
    /// Fetches time out after ten minutes unless [`SourceCache::with_timeout`] says otherwise.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SourceCache {
            root: root.into(),
            fetch_timeout: Duration::from_secs(600),
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// The mirror directory of a repository URL.
    pub fn mirror_path(&self, url: &str) -> PathBuf {
        let digest = Sha256::digest(url.as_bytes());
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let tail: String = url
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .rsplit(['/', ':'])
            .next()
            .unwrap_or("repo")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(40)
            .collect();
        let tail = if tail.is_empty() { "repo".into() } else { tail };
        self.root.join(format!("{tail}-{hash}.git"))
    }

    /// Fetches the head of `branch` from `url` into the repository's mirror and returns its
    /// commit. Fetches of the same repository wait for each other.
    #[tracing::instrument(skip(self, cancel), fields(url = %url, branch = %branch))]
    pub async fn fetch(
        &self,
        url: &str,
        branch: &str,
        cancel: &CancellationToken,
    ) -> Result<Fetched, SourceError> {
        self.fetch_with(url, branch, &Credentials::default(), cancel)
            .await
    }

    /// [`SourceCache::fetch`] with credentials for private remotes.
    ///
    /// The deadline and the cancellation hold even when the remote hangs without sending a
    /// byte: the fetch is abandoned (its worker ends when the connection does) and the mirror
    /// stays locked until then, so that no other fetch writes to it meanwhile.
    #[tracing::instrument(skip(self, credentials, cancel), fields(url = %url, branch = %branch))]
    pub async fn fetch_with(
        &self,
        url: &str,
        branch: &str,
        credentials: &Credentials,
        cancel: &CancellationToken,
    ) -> Result<Fetched, SourceError> {
        let mirror = self.mirror_path(url);
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(locks.entry(mirror.clone()).or_default())
        };
        let timeout = self.fetch_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || SourceError::Timeout {
            url: url.into(),
            seconds: timeout.as_secs(),
        };
        let guard = tokio::select! {
            g = lock.lock_owned() => g,
            () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
            () = cancel.cancelled() => return Err(SourceError::Canceled { url: url.into() }),
        };
        let (url_owned, branch_owned, mirror_owned) =
            (url.to_string(), branch.to_string(), mirror.clone());
        let (worker_cancel, credentials) = (cancel.clone(), credentials.clone());
        let started = Instant::now();
        let worker = tokio::task::spawn_blocking(move || {
            let mut swept = guard;
            fetch_blocking(
                &mut swept,
                &url_owned,
                &branch_owned,
                &mirror_owned,
                timeout,
                &credentials,
                &worker_cancel,
            )
        });
        let commit = tokio::select! {
            r = worker => r.map_err(SourceError::Worker)??,
            () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
            () = cancel.cancelled() => return Err(SourceError::Canceled { url: url.into() }),
        };
        tracing::debug!(commit = %commit, elapsed_ms = started.elapsed().as_millis() as u64, "fetched");
        Ok(Fetched {
            url: url.to_string(),
            branch: branch.to_string(),
            commit,
            mirror,
        })
    }

    /// Makes the build context of a fetched commit: `source_dir` of its tree as a tar, with
    /// the Dockerfile at `dockerfile_path` (relative to the repository root).
    pub async fn context(
        &self,
        fetched: &Fetched,
        source_dir: &str,
        dockerfile_path: &str,
    ) -> Result<BuildContext, SourceError> {
        let (mirror, commit) = (fetched.mirror.clone(), fetched.commit.clone());
        let (source_dir, dockerfile_path) = (source_dir.to_string(), dockerfile_path.to_string());
        tokio::task::spawn_blocking(move || {
            context::make(&mirror, &commit, &source_dir, &dockerfile_path)
        })
        .await
        .map_err(SourceError::Worker)?
    }
}

fn open_mirror(mirror: &Path, url: &str, swept: &mut bool) -> Result<Repository, SourceError> {
    let err = |source| SourceError::Mirror {
        path: mirror.to_path_buf(),
        source,
    };
    let repo = match Repository::open_bare(mirror) {
        Ok(r) => {
            if !*swept {
                remove_stale_locks(mirror);
            }
            r
        }
        Err(_) => {
            if let Some(parent) = mirror.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    err(git2::Error::from_str(&format!(
                        "cannot create {}: {e}",
                        parent.display()
                    )))
                })?;
            }
            Repository::init_bare(mirror).map_err(err)?
        }
    };
    match repo.find_remote("origin") {
        Ok(remote) if remote.url().ok() == Some(url) => {}
        Ok(_) => repo.remote_set_url("origin", url).map_err(err)?,
        Err(_) => {
            repo.remote("origin", url).map_err(err)?;
        }
    }
    Ok(repo)
}

/// Removes the `*.lock` files a killed fetch left behind (git writes `refs/heads/main.lock`,
/// `packed-refs.lock`, `config.lock`, … and renames them into place), which would fail every
/// later fetch with "failed to lock file". Called once per mirror and process, with the
/// mirror's fetch lock held: within the process, that lock keeps fetches from overlapping.
fn remove_stale_locks(mirror: &Path) {
    fn walk(dir: &Path, depth: usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                // objects/ holds no lock files; refs/ nests as deep as branch names do.
                if depth < 16 && entry.file_name() != "objects" {
                    walk(&path, depth + 1);
                }
            } else if path.extension().is_some_and(|e| e == "lock") {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::warn!(
                        path = %path.display(),
                        "removed a lock file left by an interrupted fetch"
                    ),
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "cannot remove a lock file left by an interrupted fetch"
                    ),
                }
            }
        }
    }
    walk(mirror, 0);
}

fn fetch_blocking(
    swept: &mut bool,
    url: &str,
    branch: &str,
    mirror: &Path,
    timeout: Duration,
    credentials: &Credentials,
    cancel: &CancellationToken,
) -> Result<String, SourceError> {
    if cancel.is_cancelled() {
        return Err(SourceError::Canceled { url: url.into() });
    }
    let repo = open_mirror(mirror, url, swept)?;
    *swept = true;
    let mut remote = repo
        .find_remote("origin")
        .map_err(|source| SourceError::Mirror {
            path: mirror.to_path_buf(),
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let go_on = move || !cancel.is_cancelled() && Instant::now() < deadline;

    let mut callbacks = RemoteCallbacks::new();
    callbacks.transfer_progress(move |_| go_on());
    callbacks.sideband_progress(move |_| go_on());
    let mut attempts = 0;
    callbacks.credentials(move |_url, username, allowed| {
        attempts += 1;
        if attempts > 3 {
            return Err(git2::Error::from_str(
                "authentication refused: the remote refused every credential offered",
            ));
        }
        credentials.offer(username, allowed)
    });
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(callbacks)
        .download_tags(AutotagOption::None)
        .prune(git2::FetchPrune::Off);
    let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    if let Err(e) = remote.fetch(&[refspec.as_str()], Some(&mut options), None) {
        if cancel.is_cancelled() {
            return Err(SourceError::Canceled { url: url.into() });
        }
        if Instant::now() >= deadline {
            return Err(SourceError::Timeout {
                url: url.into(),
                seconds: timeout.as_secs(),
            });
        }
        return Err(classify(url, branch, e));
    }
    let reference = format!("refs/heads/{branch}");
    let commit = repo
        .find_reference(&reference)
        .and_then(|r| r.peel_to_commit())
        .map_err(|_| SourceError::BranchMissing {
            url: url.into(),
            branch: branch.into(),
        })?;
    Ok(commit.id().to_string())
}

fn classify(url: &str, branch: &str, e: git2::Error) -> SourceError {
    let message = e.message().to_string();
    if e.code() == ErrorCode::Auth || message.contains("authentication") {
        return SourceError::AuthRefused {
            url: url.into(),
            message,
        };
    }
    if message.contains("couldn't find remote ref") || message.contains("not found: no matching") {
        return SourceError::BranchMissing {
            url: url.into(),
            branch: branch.into(),
        };
    }
    SourceError::Unreachable {
        url: url.into(),
        message,
    }
}
