use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, CertificateCheckStatus, ErrorClass, ErrorCode, FetchOptions, RemoteCallbacks,
    RemoteRedirect, Repository,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use slipway_spec::remote::{RemoteKind, parse_remote};
use tokio_util::sync::CancellationToken;

use crate::SourceError;
use crate::context::{self, BuildContext};
use crate::credentials::{Credentials, GitCredentials, Offer, decide};

/// The mirrors of every repository Slipway builds from.
///
/// The cache's directory belongs to one process: a lock file that git left in a mirror is
/// taken for the remains of a fetch that was killed, and removed before this process first
/// fetches into that mirror.
#[derive(Debug)]
pub struct SourceCache {
    root: PathBuf,
    fetch_timeout: Duration,
    /// The operator's credentials, each for its scope.
    credentials: GitCredentials,
    /// Certificate authorities trusted for `https://` remotes besides the system's.
    extra_trust: Option<ExtraTrust>,
    /// Whether a repository may be a path on this machine or a `file://` URL.
    allow_local: bool,
    /// Per mirror: held while a fetch writes to it; true once this process has swept the
    /// lock files an earlier process left in it.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<bool>>>>,
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
            credentials: GitCredentials::default(),
            extra_trust: None,
            allow_local: false,
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// The operator's credentials; each is offered only to the remotes its scope covers.
    pub fn with_credentials(mut self, credentials: GitCredentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Trusts the certificate authorities in a PEM file for `https://` remotes, besides the
    /// system's (a self-hosted server with a private CA). A server's certificate must be
    /// signed by one of them (an intermediate CA counts when it is in the file).
    pub fn with_ca_certs(mut self, pem_file: &Path) -> Result<Self, SourceError> {
        self.extra_trust = Some(ExtraTrust::load(pem_file)?);
        Ok(self)
    }

    /// Lets repositories be paths on this machine or `file://` URLs, which read whatever this
    /// process can read. Off by default.
    pub fn allow_local_sources(mut self, allow: bool) -> Self {
        self.allow_local = allow;
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

    /// [`SourceCache::fetch`] with the app's own credentials for its private repository (the
    /// operator's are the cache's: [`SourceCache::with_credentials`]).
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
        if !self.allow_local && parse_remote(url).kind == RemoteKind::Local {
            return Err(SourceError::LocalSource { url: url.into() });
        }
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
        let worker_cancel = cancel.clone();
        let policy = Policy {
            operator: self.credentials.clone(),
            app: credentials.clone(),
            extra_trust: self.extra_trust.clone(),
        };
        let started = Instant::now();
        let worker = tokio::task::spawn_blocking(move || {
            let mut swept = guard;
            fetch_blocking(
                &mut swept,
                &url_owned,
                &branch_owned,
                &mirror_owned,
                timeout,
                policy,
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
    policy: Policy,
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
    install_credentials(&mut callbacks, url, policy);
    let mut options = FetchOptions::new();
    // Off-site redirects only on the first request, as git does by default; a credential is
    // offered to the server a redirect leads to only when its scope covers that server.
    options
        .remote_callbacks(callbacks)
        .follow_redirects(RemoteRedirect::Initial)
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

/// What a fetch may present, and to whom.
#[derive(Debug)]
struct Policy {
    operator: GitCredentials,
    app: Credentials,
    extra_trust: Option<ExtraTrust>,
}

/// Answers the remote's requests for credentials by the scopes of [`crate::credentials`], and
/// refuses a TLS connection to another host once a credential has been handed to one.
fn install_credentials(callbacks: &mut RemoteCallbacks<'_>, url: &str, policy: Policy) {
    let own = parse_remote(url);
    let handed: Rc<RefCell<Option<String>>> = Rc::default();
    let handed_to = Rc::clone(&handed);
    let Policy {
        operator,
        app,
        extra_trust,
    } = policy;
    let mut offered: Vec<String> = Vec::new();
    callbacks.credentials(move |asking, username, allowed| {
        let refuse = |message: String| git2::Error::new(ErrorCode::Auth, ErrorClass::Http, message);
        let offer = decide(asking, &own, username, allowed, &operator, &app);
        let key = format!("{asking}|{}", allowed.bits());
        if let Some((origin, from)) = offer.given() {
            if offered.contains(&key) {
                return Err(refuse(format!(
                    "authentication refused: {origin} refused the credential of {from}"
                )));
            }
            offered.push(key);
            *handed_to.borrow_mut() = parse_remote(asking).host;
        }
        match offer {
            Offer::Token {
                user,
                token,
                origin,
                from,
            } => {
                tracing::debug!(%origin, %from, "offering a token");
                git2::Cred::userpass_plaintext(&user, &token)
            }
            Offer::SshKey { user, key, origin } => {
                tracing::debug!(%origin, key = %key.display(), "offering an SSH key");
                git2::Cred::ssh_key(&user, None, &key, None)
            }
            Offer::Username(user) => git2::Cred::username(&user),
            Offer::Refuse(message) => Err(refuse(format!("authentication required: {message}"))),
        }
    });
    callbacks.certificate_check(move |cert, host| {
        let host = host.to_ascii_lowercase();
        if let Some(to) = handed.borrow().as_deref()
            && to != host
        {
            return Err(git2::Error::new(
                ErrorCode::Certificate,
                ErrorClass::Http,
                format!(
                    "redirected to {host} after a credential was given to {to}: the connection is refused so that the credential cannot follow"
                ),
            ));
        }
        if let (Some(trust), Some(x509)) = (&extra_trust, cert.as_x509())
            && trust.verifies(x509.data(), &host)
        {
            return Ok(CertificateCheckStatus::CertificateOk);
        }
        Ok(CertificateCheckStatus::CertificatePassthrough)
    });
}

/// Certificate authorities trusted besides the system's.
#[derive(Clone)]
struct ExtraTrust {
    path: PathBuf,
    verifier: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for ExtraTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraTrust")
            .field("path", &self.path)
            .finish()
    }
}

impl ExtraTrust {
    fn load(path: &Path) -> Result<ExtraTrust, SourceError> {
        let err = |message: String| SourceError::CaCerts {
            path: path.to_path_buf(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| err(format!("not a PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(err("it holds no PEM certificate".into()));
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| err(e.to_string()))?;
        Ok(ExtraTrust {
            path: path.to_path_buf(),
            verifier,
        })
    }

    /// Whether a server's certificate (DER) is signed by one of these authorities and valid
    /// now for `host`.
    fn verifies(&self, der: &[u8], host: &str) -> bool {
        let Ok(name) = ServerName::try_from(host.to_string()) else {
            return false;
        };
        let cert = CertificateDer::from(der.to_vec());
        match self
            .verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
        {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%host, ca = %self.path.display(), error = %e, "not signed by the extra CA");
                false
            }
        }
    }
}
