//! Certificates for the apps' domains from an ACME server (RFC 8555), such as Let's Encrypt.
//!
//! [`Acme`] is told which domains the apps are served at ([`Acme::want`]); for each one without
//! a certificate that is still good, it orders one, answers the server's HTTP-01 challenge
//! through the ingress (a file in the challenges directory, which the ingress serves at
//! `/.well-known/acme-challenge/<token>` on its plain-HTTP port), and writes the certificate
//! and its key (0600) where the ingress reads its certificates. A certificate is renewed once
//! a third of its lifetime is left. A failure is kept with the ACME server's own words and
//! tried again later, each time after twice as long (from 30 s to an hour); the other domains
//! are not held up by it.
//!
//! With [`Challenge::TlsAlpn01`] (for a host whose port 80 is closed), the challenge is
//! answered on the HTTPS port instead (RFC 8737): the digest of the key authorization is
//! written to `tls-alpn-01/<domain>` in the challenges directory, and the ingress answers a
//! handshake that asks for `acme-tls/1` with a certificate that carries it.
//!
//! A certificate directory is replaced whole: the new one is written beside it and a symbolic
//! link is switched to it, so that the ingress never reads a new certificate with an old key.
//!
//! A wildcard domain gets a certificate for its own name only: HTTP-01 cannot prove control of
//! every subdomain (DNS-01 can, and is not done here); a wildcard certificate can be put in the
//! certificates directory by hand.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio_util::sync::CancellationToken;

/// What the ACME client needs.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The server's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// The contact address of the account, when given.
    pub email: Option<String>,
    /// A certificate authority (PEM) to trust for the server's own HTTPS, for a private server.
    pub ca_cert: Option<PathBuf>,
    /// Where the account's credentials are kept (0600).
    pub state_dir: PathBuf,
    /// Where certificates are written, one directory per domain.
    pub certs_dir: PathBuf,
    /// Where the HTTP-01 challenges' answers are written for the ingress.
    pub challenges_dir: PathBuf,
    /// The first wait after a failure; it doubles up to [`AcmeConfig::retry_max`].
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How often the certificates are checked for renewal.
    pub check_every: Duration,
    /// How the server is shown that this host serves the domain.
    pub challenge: Challenge,
}

/// The ACME challenge answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Challenge {
    /// A file served over plain HTTP, on the domain's port 80.
    #[default]
    Http01,
    /// A certificate shown in a TLS handshake on the domain's port 443.
    TlsAlpn01,
}

impl Challenge {
    fn kind(self) -> (ChallengeType, &'static str) {
        match self {
            Challenge::Http01 => (ChallengeType::Http01, "HTTP-01"),
            Challenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "TLS-ALPN-01"),
        }
    }
}

/// The file in the challenges directory that holds `domain`'s TLS-ALPN-01 answer (the
/// hex-encoded SHA-256 digest of the key authorization).
pub fn tls_alpn_answer(challenges_dir: &Path, domain: &str) -> PathBuf {
    challenges_dir.join("tls-alpn-01").join(domain)
}

impl AcmeConfig {
    /// The settings for `directory` with Slipway's directories under `data_dir`.
    pub fn new(directory: &str, data_dir: &Path, certs_dir: PathBuf) -> AcmeConfig {
        AcmeConfig {
            directory: directory.to_string(),
            email: None,
            ca_cert: None,
            state_dir: data_dir.join("acme"),
            certs_dir,
            challenges_dir: challenges_dir(data_dir),
            retry_min: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            check_every: Duration::from_secs(3600),
            challenge: Challenge::Http01,
        }
    }
}

/// Where the HTTP-01 challenges' answers are, for a data directory.
pub fn challenges_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme").join("challenges")
}

/// Whether a challenge token is one the ingress may look up: the base64url alphabet only.
pub fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What went wrong getting a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME server refused: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the ACME server offers no {kind} challenge for {domain}")]
    NoChallenge { kind: &'static str, domain: String },
    #[error("the ACME server gave a challenge token that is not base64url: {0:?}")]
    BadToken(String),
    #[error("the ACME server did not validate {domain}: {reason}")]
    Invalid { domain: String, reason: String },
    #[error("the ACME server did not issue the certificate for {domain} ({status})")]
    NotIssued { domain: String, status: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the stored ACME account {path} cannot be read")]
    Account {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Where a domain's certificate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DomainPhase {
    /// Not tried yet.
    Pending,
    /// Being obtained.
    Configuring,
    /// Served with a good certificate.
    Active,
    /// The last try failed; see the error.
    Error,
}

/// A domain's certificate as the ACME client knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DomainState {
    pub phase: DomainPhase,
    /// When its certificate expires, once it has one.
    pub expires_at: Option<SystemTime>,
    /// Why the last try failed, with the ACME server's words.
    pub error: Option<String>,
    /// What is under way, or what to know (a wildcard's subdomains).
    pub message: Option<String>,
    /// When it is tried again after a failure.
    #[serde(skip)]
    retry_at: Option<tokio::time::Instant>,
    #[serde(skip)]
    failures: u32,
}

impl DomainState {
    fn pending() -> DomainState {
        DomainState {
            phase: DomainPhase::Pending,
            expires_at: None,
            error: None,
            message: None,
            retry_at: None,
            failures: 0,
        }
    }
}

/// The ACME client: certificates for the wanted domains, kept good.
#[derive(Debug)]
pub struct Acme {
    config: AcmeConfig,
    wanted: tokio::sync::watch::Sender<BTreeSet<String>>,
    states: Mutex<HashMap<String, DomainState>>,
}

impl Acme {
    /// Starts the client; it works until `shutdown`.
    pub fn start(config: AcmeConfig, shutdown: CancellationToken) -> Arc<Acme> {
        let acme = Arc::new(Acme {
            config,
            wanted: tokio::sync::watch::Sender::new(BTreeSet::new()),
            states: Mutex::new(HashMap::new()),
        });
        tokio::spawn(Arc::clone(&acme).run(shutdown));
        acme
    }

    /// The domains the apps are served at now (lower-case): each gets a certificate; the
    /// others are forgotten (their certificates stay on disk until they expire).
    pub fn want(&self, domains: BTreeSet<String>) {
        {
            let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
            states.retain(|d, _| domains.contains(d));
            for d in &domains {
                states.entry(d.clone()).or_insert_with(DomainState::pending);
            }
        }
        self.wanted.send_if_modified(|w| {
            let changed = *w != domains;
            *w = domains;
            changed
        });
    }

    /// What is known of `domain`'s certificate, when it is wanted.
    pub fn state(&self, domain: &str) -> Option<DomainState> {
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
            .cloned()
    }

    fn set(&self, domain: &str, edit: impl FnOnce(&mut DomainState)) {
        if let Some(s) = self
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(domain)
        {
            edit(s);
        }
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut wanted = self.wanted.subscribe();
        let mut account: Option<Account> = None;
        loop {
            let domains = wanted.borrow_and_update().clone();
            let mut next = tokio::time::Instant::now() + self.config.check_every;
            for domain in &domains {
                if shutdown.is_cancelled() {
                    return;
                }
                if let Some(at) = self.due(domain) {
                    next = next.min(at);
                    continue;
                }
                let result = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = self.ensure(&mut account, domain) => r,
                };
                match result {
                    Ok(Some(expires)) => {
                        let renew_at = renewal_time(SystemTime::now(), expires);
                        self.set(domain, |s| {
                            *s = DomainState {
                                phase: DomainPhase::Active,
                                expires_at: Some(expires),
                                message: s.message.take(),
                                ..DomainState::pending()
                            };
                        });
                        if let Ok(wait) = renew_at.duration_since(SystemTime::now()) {
                            next = next.min(tokio::time::Instant::now() + wait);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let why = error_chain(&e);
                        tracing::warn!(%domain, error = %why, "no certificate could be obtained");
                        let (min, max) = (self.config.retry_min, self.config.retry_max);
                        self.set(domain, |s| {
                            let wait = min
                                .saturating_mul(2u32.saturating_pow(s.failures.min(16)))
                                .min(max);
                            s.failures += 1;
                            s.phase = DomainPhase::Error;
                            s.error = Some(why);
                            s.retry_at = Some(tokio::time::Instant::now() + wait);
                            next = next.min(tokio::time::Instant::now() + wait);
                        });
                        // A refused account or an unreachable server: made again next time.
                        account = None;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = wanted.changed() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// When `domain` may be tried again, while it may not be yet.
    fn due(&self, domain: &str) -> Option<tokio::time::Instant> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let at = states.get(domain)?.retry_at?;
        (at > tokio::time::Instant::now()).then_some(at)
    }

    /// A good certificate for `domain`: the one on disk, or a new one. Returns its expiry,
    /// or `None` when there is nothing to do (the domain is not wanted any more).
    async fn ensure(
        &self,
        account: &mut Option<Account>,
        domain: &str,
    ) -> Result<Option<SystemTime>, AcmeError> {
        if let Some((issued, expires)) = on_disk(&self.config.certs_dir.join(domain))
            && SystemTime::now() < renewal_time(issued, expires)
        {
            return Ok(Some(expires));
        }
        self.set(domain, |s| {
            s.phase = DomainPhase::Configuring;
            s.message = Some(format!(
                "ordering a certificate from {}",
                self.config.directory
            ));
        });
        let account = match account {
            Some(a) => a,
            None => account.insert(self.account().await?),
        };
        let expires = self.issue(account, domain).await?;
        self.set(domain, |s| s.message = None);
        Ok(Some(expires))
    }

    /// The stored account for this directory, or a new one (stored, 0600).
    async fn account(&self) -> Result<Account, AcmeError> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Stored {
            directory: String,
            credentials: AccountCredentials,
        }
        let path = self.config.state_dir.join("account.json");
        let builder = || match &self.config.ca_cert {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        if let Ok(text) = std::fs::read(&path) {
            let stored: Stored =
                serde_json::from_slice(&text).map_err(|source| AcmeError::Account {
                    path: path.clone(),
                    source,
                })?;
            if stored.directory == self.config.directory {
                return Ok(builder()?.from_credentials(stored.credentials).await?);
            }
        }
        let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await?;
        let stored = Stored {
            directory: self.config.directory.clone(),
            credentials,
        };
        let text = serde_json::to_vec_pretty(&stored).map_err(|source| AcmeError::Account {
            path: path.clone(),
            source,
        })?;
        write_private(&path, &text)?;
        tracing::info!(directory = %self.config.directory, "an ACME account was created");
        Ok(account)
    }

    /// Orders, proves and fetches a certificate for `domain`, and writes it.
    async fn issue(&self, account: &Account, domain: &str) -> Result<SystemTime, AcmeError> {
        tracing::info!(%domain, directory = %self.config.directory, "ordering a certificate");
        let mut order = account
            .new_order(&NewOrder::new(&[Identifier::Dns(domain.to_string())]))
            .await?;
        let mut answers = Vec::new();
        let answered = self
            .answer_challenges(&mut order, domain, &mut answers)
            .await;
        let result = match answered {
            Ok(()) => self.finish(&mut order, domain).await,
            Err(e) => Err(e),
        };
        for answer in answers {
            let _ = std::fs::remove_file(answer);
        }
        result
    }

    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        domain: &str,
        answers: &mut Vec<PathBuf>,
    ) -> Result<(), AcmeError> {
        let (kind, name) = self.config.challenge.kind();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Invalid {
                        domain: domain.to_string(),
                        reason: format!("its authorization is {other:?}"),
                    });
                }
            }
            let mut challenge =
                authz
                    .challenge(kind.clone())
                    .ok_or_else(|| AcmeError::NoChallenge {
                        kind: name,
                        domain: domain.to_string(),
                    })?;
            let answer = challenge.key_authorization();
            let path = match self.config.challenge {
                Challenge::Http01 => {
                    if !is_token(&challenge.token) {
                        return Err(AcmeError::BadToken(challenge.token.clone()));
                    }
                    let path = self.config.challenges_dir.join(&challenge.token);
                    write_private_mode(&path, answer.as_str().as_bytes(), 0o644)?;
                    path
                }
                Challenge::TlsAlpn01 => {
                    let path = tls_alpn_answer(&self.config.challenges_dir, domain);
                    let hex: String = answer
                        .digest()
                        .as_ref()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    write_private_mode(&path, hex.as_bytes(), 0o644)?;
                    path
                }
            };
            answers.push(path);
            challenge.set_ready().await?;
        }
        Ok(())
    }

    async fn finish(
        &self,
        order: &mut instant_acme::Order,
        domain: &str,
    ) -> Result<SystemTime, AcmeError> {
        let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            // The server's reason is on the challenge.
            let mut reason = format!("the order is {status:?}");
            let mut authorizations = order.authorizations();
            let (kind, _) = self.config.challenge.kind();
            while let Some(Ok(mut authz)) = authorizations.next().await {
                if let Some(challenge) = authz.challenge(kind.clone())
                    && let Some(problem) = &challenge.error
                {
                    reason = problem.to_string();
                }
            }
            return Err(AcmeError::Invalid {
                domain: domain.to_string(),
                reason,
            });
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&retries).await?;
        let expires =
            on_pem(chain.as_bytes())
                .map(|(_, e)| e)
                .ok_or_else(|| AcmeError::NotIssued {
                    domain: domain.to_string(),
                    status: "its certificate cannot be read".into(),
                })?;
        self.store(domain, &chain, &key)?;
        tracing::info!(%domain, "a certificate was obtained");
        Ok(expires)
    }

    /// Writes the certificate and key as `certs_dir/<domain>`: a new directory beside the
    /// others, then the link switched to it, then the old one removed.
    fn store(&self, domain: &str, chain: &str, key: &str) -> Result<(), AcmeError> {
        let certs = &self.config.certs_dir;
        let issued = certs.join(".issued");
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let name = format!("{domain}-{stamp}");
        let dir = issued.join(&name);
        create_private_dir(&dir)?;
        write_private_mode(&dir.join("cert.pem"), chain.as_bytes(), 0o644)?;
        write_private(&dir.join("key.pem"), key.as_bytes())?;
        let link = certs.join(domain);
        let previous = std::fs::read_link(&link).ok();
        // A directory put there by hand is moved aside once: a link cannot replace it.
        let replaced = match std::fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => {
                let aside = issued.join(format!("{domain}-{stamp}-replaced"));
                std::fs::rename(&link, &aside).map_err(|source| AcmeError::Write {
                    path: link.clone(),
                    source,
                })?;
                Some(aside)
            }
            _ => None,
        };
        let temporary = certs.join(format!(".{domain}.link"));
        let _ = std::fs::remove_file(&temporary);
        let switch = std::os::unix::fs::symlink(Path::new(".issued").join(&name), &temporary)
            .and_then(|()| std::fs::rename(&temporary, &link));
        switch.map_err(|source| AcmeError::Write {
            path: link.clone(),
            source,
        })?;
        for old in previous.map(|p| certs.join(p)).into_iter().chain(replaced) {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(())
    }
}

/// When a certificate valid from `issued` to `expires` is renewed: a third of its lifetime
/// before it ends.
fn renewal_time(issued: SystemTime, expires: SystemTime) -> SystemTime {
    let lifetime = expires.duration_since(issued).unwrap_or_default();
    expires - lifetime / 3
}

/// The validity (from, to) of the certificate in `dir/cert.pem`.
fn on_disk(dir: &Path) -> Option<(SystemTime, SystemTime)> {
    on_pem(&std::fs::read(dir.join("cert.pem")).ok()?)
}

fn on_pem(pem: &[u8]) -> Option<(SystemTime, SystemTime)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let first = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    let at = |t: i64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).ok()?));
    let validity = parsed.validity();
    Some((
        at(validity.not_before.timestamp())?,
        at(validity.not_after.timestamp())?,
    ))
}

fn create_private_dir(dir: &Path) -> Result<(), AcmeError> {
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| AcmeError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` (0600), through a temporary file renamed over it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    write_private_mode(path, bytes, 0o600)
}

fn write_private_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AcmeError> {
    let err = |source| AcmeError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let temporary = path.with_extension("tmp");
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&temporary, path).map_err(err)
}

/// An error and its causes, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_renewed_with_a_third_of_its_life_left() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let expires = issued + Duration::from_secs(90 * 86_400);
        assert_eq!(
            renewal_time(issued, expires),
            issued + Duration::from_secs(60 * 86_400)
        );
    }

    #[test]
    fn only_base64url_tokens_are_looked_up() {
        assert!(is_token("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"));
        assert!(!is_token("../secret.key"));
        assert!(!is_token(""));
        assert!(!is_token("a/b"));
    }
}
