//! Where the engine's fetches send the operator's git credentials and an app's own token:
//! deployments against real HTTP and HTTPS servers on loopback that ask for Basic
//! authentication and record every `Authorization` header they receive.

use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use slipway_engine::{Engine, EngineConfig, GitCredentials};
use slipway_spec::{Phase, parse_spec};
use slipway_testkit::{Janitor, unique};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A server on 127.0.0.1 (over TLS when given a certificate) that answers every request with
/// 401 and a Basic challenge, and records each request's `Authorization` header.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (record, tls) = (Arc::clone(&record), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(a) => {
                            if let Ok(s) = a.accept(stream).await {
                                deny(s, &record).await;
                            }
                        }
                        None => deny(stream, &record).await,
                    }
                });
            }
        });
        Recorder { port, seen, task }
    }

    fn authorizations(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn deny<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, record: &Mutex<Vec<Option<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    record.lock().unwrap().push(head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_string())
    }));
    let _ = s
        .write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
    let _ = s.shutdown().await;
}

/// A CA (its PEM) and a TLS acceptor with a certificate it signed for `localhost`.
fn tls() -> (String, tokio_rustls::TlsAcceptor) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Deploys an app whose one service builds from `url` (with `env` as its envs), and returns
/// the failed build step's message.
async fn deploy(engine: &Engine, name: &str, url: &str, envs: &str) -> String {
    let spec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{url}\", branch: main}}\n    envs: {envs}\n"
    ))
    .unwrap()
    .spec;
    let (app, d) = engine.create_app(spec).await.unwrap();
    let d = engine.wait(&app.id, &d.id).await.unwrap();
    assert_eq!(d.phase, Phase::Error);
    d.progress.first_error().unwrap().1.message.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_token_goes_only_to_its_scope_and_never_over_plain_http() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let (ca_pem, acceptor) = tls();
    let plain = Recorder::start(None).await;
    let https = Recorder::start(Some(acceptor)).await;
    let daemon_id = unique("creds");
    let _janitor = Janitor::new(&daemon_id);
    let data = tempfile::tempdir().unwrap();
    let ca = data.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let mut credentials = GitCredentials::default();
    credentials
        .add_token("git.example.com", "token-for-another-host")
        .unwrap();
    credentials
        .add_token(&format!("127.0.0.1:{}", plain.port), "token-over-http")
        .unwrap();
    credentials
        .add_token(&format!("localhost:{}/team", https.port), "team-token")
        .unwrap();
    let mut config = EngineConfig::new(data.path().join("data"));
    config.daemon_id = daemon_id;
    config.git_credentials = credentials;
    config.git_ca_cert = Some(ca);
    let engine = Engine::start(config, docker).await.unwrap();

    // An API user points an app at a server of theirs: nothing is sent.
    let message = deploy(
        &engine,
        "plain",
        &format!("http://127.0.0.1:{}/repo.git", plain.port),
        "[]",
    )
    .await;
    assert!(message.contains("plain http://"), "{message}");
    let message = deploy(
        &engine,
        "elsewhere",
        &format!("https://localhost:{}/other/repo.git", https.port),
        "[]",
    )
    .await;
    assert!(
        message.contains(&format!("--git-credential localhost:{}", https.port)),
        "{message}"
    );
    assert!(plain.requests() >= 1 && https.requests() >= 1);
    assert_eq!(plain.authorizations(), Vec::<String>::new());
    assert_eq!(https.authorizations(), Vec::<String>::new());

    // In its scope, over https:// to a server signed by --git-ca-cert: sent.
    let message = deploy(
        &engine,
        "team",
        &format!("https://localhost:{}/team/repo.git", https.port),
        "[]",
    )
    .await;
    assert!(message.contains("refused the credential"), "{message}");
    assert_eq!(
        https.authorizations(),
        vec![basic("x-access-token", "team-token")]
    );

    // The app's own token: to its own repository's host over https://, never over http://.
    let envs = "[{key: SLIPWAY_GIT_TOKEN, value: app-token, type: SECRET}]";
    deploy(
        &engine,
        "own",
        &format!("https://localhost:{}/own/repo.git", https.port),
        envs,
    )
    .await;
    assert_eq!(
        https.authorizations()[1..],
        [basic("x-access-token", "app-token")]
    );
    deploy(
        &engine,
        "own-plain",
        &format!("http://127.0.0.1:{}/repo.git", plain.port),
        envs,
    )
    .await;
    assert_eq!(plain.authorizations(), Vec::<String>::new());
    engine.shutdown().await;
}
