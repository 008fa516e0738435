//! HTTPS for the apps' domains: the ingress terminates TLS, picks each connection's
//! certificate by its SNI name, and offers HTTP/2 and HTTP/1.1 by ALPN.
//!
//! Certificates are read from a directory: each subdirectory holds one certificate chain
//! (`cert.pem`) and its key (`key.pem`, which must be readable by its owner only), and serves
//! every DNS name the certificate names (a `*.example.com` name: each subdomain). The directory
//! is read again whenever the routing table changes and every 10 s, so a certificate written
//! there (by hand, or by the daemon's ACME client) is served without a restart. A name with no
//! certificate there gets a self-signed one, made on first use, when the ingress is told to make
//! them (for local use); otherwise its handshake fails.
//!
//! Requests over HTTPS are served by hyper, on the same routing as plain HTTP. A plain-HTTP
//! request for a domain the ingress has a certificate for is redirected to HTTPS (308), but
//! ACME's HTTP-01 challenges.

use std::collections::HashMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::Upstreams;
use crate::table::{Ingress, Proxy};

/// The path of ACME's HTTP-01 challenges, which stay on plain HTTP.
pub(crate) const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// How often the certificate directory is read again, besides on every table change.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// What is wrong with a certificate in the directory.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error(
        "{path} has mode {mode:o}: a private key must be readable by its owner only (chmod 600 {path})",
        path = .path.display()
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("{path}: the key cannot be used ({reason})", path = .path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{path} names no DNS name the ingress could serve it for", path = .path.display())]
    NoNames { path: PathBuf },
}

/// One certificate of the directory, with the names it serves and when it expires.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub dir: PathBuf,
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

/// The certificates the ingress serves, by name.
#[derive(Debug)]
pub struct Certificates {
    dir: Option<PathBuf>,
    self_signed: bool,
    state: RwLock<State>,
    /// Self-signed certificates made so far, by name.
    minted: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

#[derive(Debug, Default)]
struct State {
    /// By DNS name; `*.example.com` for a wildcard.
    by_name: HashMap<String, Arc<CertifiedKey>>,
    loaded: Vec<Loaded>,
    /// Why the certificates that are not served are not, with their causes.
    problems: Vec<String>,
    /// The files read, with their modification times: nothing is parsed again until one
    /// changes.
    stamps: Vec<(PathBuf, Option<SystemTime>)>,
}

impl Certificates {
    /// The certificates of `dir` (none without one); `self_signed` makes one for a served
    /// name that has none.
    pub fn new(dir: Option<PathBuf>, self_signed: bool) -> Arc<Certificates> {
        let certs = Arc::new(Certificates {
            dir,
            self_signed,
            state: RwLock::new(State::default()),
            minted: Mutex::new(HashMap::new()),
        });
        certs.reload();
        certs
    }

    /// Reads the directory again when a file in it changed. A certificate that cannot be
    /// loaded is not served (the others are); [`Certificates::problems`] says why.
    pub fn reload(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let mut pairs: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                // Hidden entries are the ACME client's work in progress.
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect(),
            Err(_) => Vec::new(),
        };
        pairs.sort();
        let stamps: Vec<(PathBuf, Option<SystemTime>)> = pairs
            .iter()
            .flat_map(|d| [d.join("cert.pem"), d.join("key.pem")])
            .map(|f| {
                let modified = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
                (f, modified)
            })
            .collect();
        if self.state.read().unwrap_or_else(|e| e.into_inner()).stamps == stamps {
            return;
        }
        let mut state = State {
            stamps,
            ..State::default()
        };
        for pair in pairs {
            match load(&pair) {
                Ok((key, loaded)) => {
                    let key = Arc::new(key);
                    for name in &loaded.names {
                        state.by_name.insert(name.clone(), Arc::clone(&key));
                    }
                    state.loaded.push(loaded);
                }
                Err(e) => {
                    let why = slipway_spec::error_chain(&e);
                    tracing::warn!(error = %why, "a certificate is not served");
                    state.problems.push(why);
                }
            }
        }
        tracing::info!(
            certificates = state.loaded.len(),
            names = state.by_name.len(),
            "the ingress's certificates were read"
        );
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Why the certificates of the directory that are not served are not.
    pub fn problems(&self) -> Vec<String> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .clone()
    }

    /// The certificates served now.
    pub fn loaded(&self) -> Vec<Loaded> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .loaded
            .clone()
    }

    /// The certificate of the directory for `name`: its own, else a wildcard's one level up.
    fn in_dir(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = state.by_name.get(name) {
            return Some(Arc::clone(key));
        }
        let (_, parent) = name.split_once('.')?;
        state.by_name.get(&format!("*.{parent}")).cloned()
    }

    /// Whether a connection for `name` would get a certificate (`name` is served by the
    /// ingress).
    pub(crate) fn covers(&self, name: &str) -> bool {
        self.self_signed || self.in_dir(name).is_some()
    }

    /// The certificate for `name`, a name the ingress serves.
    fn for_name(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(key) = self.in_dir(name) {
            return Some(key);
        }
        if !self.self_signed {
            return None;
        }
        let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = minted.get(name) {
            return Some(Arc::clone(key));
        }
        let key = match mint(name) {
            Ok(key) => Arc::new(key),
            Err(e) => {
                tracing::warn!(%name, error = %e, "a self-signed certificate could not be made");
                return None;
            }
        };
        minted.insert(name.to_string(), Arc::clone(&key));
        Some(key)
    }
}

/// A certificate and key of the directory.
fn load(dir: &Path) -> Result<(CertifiedKey, Loaded), CertificateError> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertificateError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&cert_path)?)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate { path: cert_path });
    }
    let mode = std::fs::metadata(&key_path)
        .map_err(|source| CertificateError::Read {
            path: key_path.clone(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CertificateError::KeyMode {
            path: key_path,
            mode: mode & 0o777,
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|_| CertificateError::NoKey {
            path: key_path.clone(),
        })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertificateError::Key {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    certified.keys_match().map_err(|e| CertificateError::Key {
        path: key_path.clone(),
        reason: format!("it is not the key of {}: {e}", cert_path.display()),
    })?;
    let (names, not_after) = names_and_expiry(&chain[0]);
    if names.is_empty() {
        return Err(CertificateError::NoNames { path: cert_path });
    }
    Ok((
        certified,
        Loaded {
            dir: dir.to_path_buf(),
            names,
            not_after,
        },
    ))
}

/// The DNS names a certificate is for (its subject alternative names, lower-case) and the
/// end of its validity.
pub fn names_and_expiry(cert: &CertificateDer<'_>) -> (Vec<String>, SystemTime) {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => {
            let names = parsed
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => {
                                Some(d.to_ascii_lowercase())
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let seconds = parsed.validity().not_after.timestamp();
            let not_after = SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(seconds).unwrap_or_default());
            (names, not_after)
        }
        Err(_) => (Vec::new(), SystemTime::UNIX_EPOCH),
    }
}

/// A self-signed certificate for `name`.
fn mint(name: &str) -> Result<CertifiedKey, String> {
    let generated =
        rcgen::generate_simple_self_signed(vec![name.to_string()]).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| e.to_string())?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(
        vec![generated.cert.der().clone()],
        signing,
    ))
}

/// The ALPN protocol of ACME's TLS-ALPN-01 validations (RFC 8737).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The TLS settings that answer a TLS-ALPN-01 validation for `name`: a self-signed certificate
/// for it with the `acmeIdentifier` extension carrying the digest the ACME client wrote to
/// `tls-alpn-01/<name>` in the challenges directory.
fn acme_answer(ingress: &Ingress, name: &str) -> Option<Arc<rustls::ServerConfig>> {
    let dir = ingress.config.acme_challenges.as_ref()?;
    // A host name only: never a path out of the directory.
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return None;
    }
    let hex = std::fs::read_to_string(dir.join("tls-alpn-01").join(name)).ok()?;
    let hex = hex.trim();
    let digest: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    if digest.len() != 32 {
        return None;
    }
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).ok()?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(&digest));
    let key = rcgen::KeyPair::generate().ok()?;
    let cert = params.self_signed(&key).ok()?;
    // Given as a resolver's answer, not checked as a certificate to serve: its critical
    // acmeIdentifier extension is one a TLS library would refuse in a certificate it is told
    // to serve, and it is meant for the ACME server alone.
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into())
        .ok()?;
    let answer = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .ok()?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(Fixed(answer)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Some(Arc::new(config))
}

/// Always the same certificate.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Picks a connection's certificate by its SNI name, among the names the ingress serves.
#[derive(Debug)]
struct Resolver {
    ingress: Arc<Ingress>,
    certs: Arc<Certificates>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        // Only for names an app is served at: a client cannot make the ingress mint a
        // certificate for any name it likes.
        self.ingress.app_for_host(&name)?;
        self.certs.for_name(&name)
    }
}

/// The TLS settings of the ingress: TLS 1.2 and 1.3, or 1.3 only (for a domain whose
/// `minimum_tls_version` is 1.3), both offering `h2` and `http/1.1`.
fn configs(resolver: Arc<Resolver>) -> (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>) {
    let make = |versions: &[&'static rustls::SupportedProtocolVersion]| {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    };
    let any = make(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    let mut tls13 = (*make(&[&rustls::version::TLS13])).clone();
    // One session cache and ticket key for both: a client resumes whichever it used.
    tls13.session_storage = Arc::clone(&any.session_storage);
    tls13.ticketer = Arc::clone(&any.ticketer);
    (any, Arc::new(tls13))
}

/// Serves HTTPS on `listener` until `shutdown`, with the certificates of `certs`; then waits
/// (at most the shutdown grace) for the connections to finish. Plain-HTTP requests for names
/// with a certificate are redirected here from then on.
pub async fn serve_tls(
    ingress: Arc<Ingress>,
    listener: TcpListener,
    certs: Arc<Certificates>,
    shutdown: CancellationToken,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(443);
    ingress.set_https(port, Arc::clone(&certs));
    let resolver = Arc::new(Resolver {
        ingress: Arc::clone(&ingress),
        certs: Arc::clone(&certs),
    });
    let (any, tls13) = configs(resolver);
    let proxy = Arc::new(Proxy {
        ingress: Arc::clone(&ingress),
        scheme: http::HeaderValue::from_static("https"),
        tls: true,
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ingress.config.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    // The directory is read again on every change of the table, and every few seconds.
    let reloading = {
        let (certs, shutdown) = (Arc::clone(&certs), shutdown.clone());
        let mut changes = ingress.changes();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(RELOAD_EVERY) => {}
                }
                let certs = Arc::clone(&certs);
                let _ = tokio::task::spawn_blocking(move || certs.reload()).await;
            }
        })
    };
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (proxy, builder, shutdown) =
            (Arc::clone(&proxy), Arc::clone(&builder), shutdown.clone());
        let (any, tls13) = (Arc::clone(&any), Arc::clone(&tls13));
        connections.spawn(async move {
            let timeout = proxy.ingress.config.header_timeout;
            let handshake = async {
                let start = tokio_rustls::LazyConfigAcceptor::new(
                    rustls::server::Acceptor::default(),
                    stream,
                )
                .await?;
                let hello = start.client_hello();
                let name = hello.server_name().map(str::to_ascii_lowercase);
                let acme = hello
                    .alpn()
                    .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
                if acme {
                    // An ACME server's TLS-ALPN-01 validation: the answer, and nothing else.
                    let config = name
                        .as_deref()
                        .and_then(|n| acme_answer(&proxy.ingress, n))
                        .ok_or_else(|| {
                            std::io::Error::other("no TLS-ALPN-01 answer for this name")
                        })?;
                    let _ = start.into_stream(config).await?;
                    return Err(std::io::Error::other(
                        "a TLS-ALPN-01 validation was answered",
                    ));
                }
                let config = match name {
                    Some(n) if proxy.ingress.requires_tls13(&n) => tls13,
                    _ => any,
                };
                start.into_stream(config).await
            };
            let tls = match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "a TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let upstreams = Arc::new(Upstreams::default());
            let service = hyper::service::service_fn(move |req| {
                let (proxy, upstreams) = (Arc::clone(&proxy), Arc::clone(&upstreams));
                async move { Ok::<_, Infallible>(proxy.handle(req, remote, upstreams).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %remote, "an HTTPS connection ended with an error");
            }
        });
    }
    drop(listener);
    reloading.abort();
    connections.close();
    let _ = tokio::time::timeout(crate::proxy::SHUTDOWN_GRACE, connections.wait()).await;
}

/// Where HTTPS is served, for the redirects from plain HTTP.
#[derive(Debug)]
pub(crate) struct Https {
    pub port: u16,
    pub certs: Arc<Certificates>,
}
