//! Where the fetcher sends credentials, against real HTTP and HTTPS servers on loopback that
//! ask for Basic authentication, record every `Authorization` header they are sent, and
//! redirect.

use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use slipway_source::{Credentials, GitCredentials, SourceCache, SourceError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const DENY: &str = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What a server answers.
#[derive(Clone)]
enum Answer {
    /// 401 with a Basic challenge, always.
    Deny,
    /// 401 until a request carries credentials, then a redirect to `location` (with a Basic
    /// challenge of its own when `challenge`).
    RedirectOnceAuthenticated { location: String, challenge: bool },
}

/// A CA, and a server certificate it signed for `localhost` and `127.0.0.1`.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "slipway test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

/// A server on 127.0.0.1 (over TLS when given a certificate), recording each request's
/// `Authorization` header (or `-` for none).
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(answer: Answer, tls: Option<&Pki>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tls.map(|pki| {
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.chain.clone(), PrivateKeyDer::Pkcs8(pki.key.clone_key()))
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (record, answer, acceptor) =
                    (Arc::clone(&record), answer.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(stream).await {
                                serve(s, &answer, &record).await;
                            }
                        }
                        None => serve(stream, &answer, &record).await,
                    }
                });
            }
        });
        Server { port, seen, task }
    }

    fn authorizations(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|a| *a != "-")
            .cloned()
            .collect()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Reads one request's head and answers it; the connection is closed after.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    answer: &Answer,
    record: &Mutex<Vec<String>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 65536 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let auth = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "-".into());
    let authenticated = auth != "-";
    record.lock().unwrap().push(auth);
    let reply = match answer {
        Answer::Deny => DENY.to_string(),
        Answer::RedirectOnceAuthenticated { .. } if !authenticated => DENY.to_string(),
        Answer::RedirectOnceAuthenticated {
            location,
            challenge,
        } => format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}/info/refs?service=git-upload-pack\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
            if *challenge {
                "WWW-Authenticate: Basic realm=\"git\"\r\n"
            } else {
                ""
            }
        ),
    };
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// `user:password`, as a Basic `Authorization` header carries it.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    cache: SourceCache,
    cancel: CancellationToken,
}

fn cache(credentials: &[(&str, &str)], ca: Option<&Pki>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut creds = GitCredentials::default();
    for (scope, token) in credentials {
        creds.add_token(scope, *token).unwrap();
    }
    let mut cache = SourceCache::new(dir.path().join("git"))
        .with_timeout(std::time::Duration::from_secs(20))
        .with_credentials(creds);
    if let Some(pki) = ca {
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, &pki.ca_pem).unwrap();
        cache = cache.with_ca_certs(&path).unwrap();
    }
    Fixture {
        _dir: dir,
        cache,
        cancel: CancellationToken::new(),
    }
}

impl Fixture {
    async fn fetch(&self, url: &str, app_token: Option<&str>) -> SourceError {
        let creds = Credentials {
            token: app_token.map(Into::into),
        };
        self.cache
            .fetch_with(url, "main", &creds, &self.cancel)
            .await
            .expect_err("every server here refuses or redirects")
    }
}

#[tokio::test]
async fn no_credential_goes_to_a_host_outside_its_scope_nor_over_plain_http() {
    let pki = pki();
    let plain = Server::start(Answer::Deny, None).await;
    let tls = Server::start(Answer::Deny, Some(&pki)).await;
    // A token for another host, and one for this very server but over plain http://.
    let f = cache(
        &[
            ("git.example.com", "operator-token"),
            (&format!("127.0.0.1:{}", plain.port), "plain-token"),
        ],
        Some(&pki),
    );

    let url = format!("http://127.0.0.1:{}/team/app.git", plain.port);
    let err = f.fetch(&url, None).await;
    assert!(matches!(err, SourceError::AuthRefused { .. }), "{err}");
    assert!(err.to_string().contains("plain http://"), "{err}");
    let err = f.fetch(&url, Some("app-token")).await;
    assert!(matches!(err, SourceError::AuthRefused { .. }), "{err}");
    assert!(plain.requests() >= 2, "the server was asked");
    assert_eq!(plain.authorizations(), Vec::<String>::new());

    let url = format!("https://localhost:{}/team/app.git", tls.port);
    let err = f.fetch(&url, None).await;
    assert!(matches!(err, SourceError::AuthRefused { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("localhost:{} asks for credentials", tls.port))
            && text.contains(&format!("--git-credential localhost:{}", tls.port))
            && text.contains("SLIPWAY_GIT_TOKEN"),
        "{text}"
    );
    assert!(tls.requests() >= 1, "the server was asked");
    assert_eq!(tls.authorizations(), Vec::<String>::new());
}

#[tokio::test]
async fn over_https_a_token_goes_exactly_where_its_scope_says() {
    let pki = pki();
    let tls = Server::start(Answer::Deny, Some(&pki)).await;
    let port = tls.port;
    let f = cache(
        &[(&format!("localhost:{port}/team"), "team-token")],
        Some(&pki),
    );

    // In scope: sent, once; the server refusing it is named.
    let err = f
        .fetch(&format!("https://localhost:{port}/team/app.git"), None)
        .await;
    assert!(matches!(err, SourceError::AuthRefused { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "refused the credential of --git-credential localhost:{port}/team"
        )),
        "{err}"
    );
    assert_eq!(
        tls.authorizations(),
        vec![basic("x-access-token", "team-token")]
    );

    // Outside the path prefix, or climbing out of it: not sent.
    for path in [
        "/teamster/app.git",
        "/other/app.git",
        "/team/../other/app.git",
    ] {
        let err = f
            .fetch(&format!("https://localhost:{port}{path}"), None)
            .await;
        assert!(
            matches!(err, SourceError::AuthRefused { .. }),
            "{path}: {err}"
        );
    }
    assert_eq!(tls.authorizations().len(), 1, "{:?}", tls.authorizations());

    // The app's own token, to its own host.
    let err = f
        .fetch(
            &format!("https://localhost:{port}/mine.git"),
            Some("app-token"),
        )
        .await;
    assert!(
        err.to_string()
            .contains("refused the credential of the app's SLIPWAY_GIT_TOKEN"),
        "{err}"
    );
    assert_eq!(
        tls.authorizations()[1..],
        [basic("x-access-token", "app-token")]
    );

    // Without the CA, the server's certificate is not trusted and nothing is sent.
    let untrusting = cache(&[(&format!("localhost:{port}/team"), "team-token")], None);
    let before = tls.authorizations().len();
    let err = untrusting
        .fetch(&format!("https://localhost:{port}/team/app.git"), None)
        .await;
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err}");
    assert_eq!(tls.authorizations().len(), before);
}

#[tokio::test]
async fn a_redirect_to_another_host_does_not_carry_the_credential() {
    let pki = pki();
    // `localhost` on another port is another host: a credential names its port.
    let other_port = Server::start(Answer::Deny, Some(&pki)).await;
    let other_name = Server::start(Answer::Deny, Some(&pki)).await;
    let to_port = Server::start(
        Answer::RedirectOnceAuthenticated {
            location: format!("https://localhost:{}/app.git", other_port.port),
            challenge: false,
        },
        Some(&pki),
    )
    .await;
    // A redirect that carries a challenge of its own: libgit2 would answer it with the
    // credential it holds, without asking again.
    let to_name = Server::start(
        Answer::RedirectOnceAuthenticated {
            location: format!("https://127.0.0.1:{}/app.git", other_name.port),
            challenge: true,
        },
        Some(&pki),
    )
    .await;
    let f = cache(
        &[
            (&format!("localhost:{}", to_port.port), "token-a"),
            (&format!("localhost:{}", to_name.port), "token-b"),
        ],
        Some(&pki),
    );

    let err = f
        .fetch(&format!("https://localhost:{}/app.git", to_port.port), None)
        .await;
    assert!(matches!(err, SourceError::AuthRefused { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "localhost:{} asks for credentials and none is configured",
            other_port.port
        )),
        "{err}"
    );
    assert_eq!(
        to_port.authorizations(),
        vec![basic("x-access-token", "token-a")]
    );
    assert!(other_port.requests() >= 1, "the redirect was followed");
    assert_eq!(other_port.authorizations(), Vec::<String>::new());

    let err = f
        .fetch(&format!("https://localhost:{}/app.git", to_name.port), None)
        .await;
    assert_eq!(other_name.authorizations(), Vec::<String>::new());
    assert_eq!(
        to_name.authorizations(),
        vec![basic("x-access-token", "token-b")]
    );
    assert!(
        err.to_string()
            .contains("so that the credential cannot follow"),
        "{err}"
    );

    // The app's own token does not follow a redirect either.
    let err = f
        .fetch(
            &format!("https://localhost:{}/app.git", to_name.port),
            Some("app-token"),
        )
        .await;
    assert!(
        err.to_string()
            .contains("so that the credential cannot follow"),
        "{err}"
    );
    assert_eq!(other_name.authorizations(), Vec::<String>::new());
}
