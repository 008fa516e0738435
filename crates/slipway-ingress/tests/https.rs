//! HTTPS for the apps' domains over real TLS: certificates picked by SNI from a directory
//! (exact and wildcard names, read again when they change), HTTP/2 by ALPN, plain HTTP
//! redirected but for ACME's challenges, a domain that asks for TLS 1.3, and self-signed
//! certificates for local use.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slipway_ingress::{Certificates, Ingress, IngressConfig};
use slipway_spec::parse_spec;
use slipway_testkit::Authority;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A backend that answers its name, the path and the `x-forwarded-proto` it was given.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| async move {
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let text = format!("{name} {} {proto}", req.uri());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

const HOSTS: [&str; 6] = [
    "shop.example.com",
    "a.example.org",
    "late.example.com",
    "strict.example.com",
    "loose.example.com",
    "shop.localhost",
];

/// A client that trusts `ca` only (any certificate without one) and sends every test host to
/// the ingress's address; each URL names the port, HTTP's or HTTPS's.
fn client(ca: Option<&str>, ingress: SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    b = match ca {
        Some(pem) => b
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()),
        None => b.danger_accept_invalid_certs(true),
    };
    for h in HOSTS {
        b = b.resolve(h, ingress);
    }
    b.build().unwrap()
}

struct Served {
    ingress: Arc<Ingress>,
    http: SocketAddr,
    https: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

async fn serve(spec: &str, certs: Arc<Certificates>) -> Served {
    serve_with(spec, certs, backend("web").await).await
}

/// [`serve`] with `web-1` at `web`.
async fn serve_with(spec: &str, certs: Arc<Certificates>, web: SocketAddr) -> Served {
    let ingress = Ingress::new(IngressConfig::default());
    ingress.set_app("app1", &parse_spec(spec).unwrap().spec);
    ingress.add("app1", "web", "web-1", web);
    let stop = CancellationToken::new();
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http, https) = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
    tokio::spawn(slipway_ingress::serve(
        Arc::clone(&ingress),
        plain,
        stop.clone(),
    ));
    tokio::spawn(slipway_ingress::serve_tls(
        Arc::clone(&ingress),
        tls,
        certs,
        stop.clone(),
    ));
    // serve_tls says where HTTPS is before it accepts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Served {
        ingress,
        http,
        https,
        _stop: stop.drop_guard(),
    }
}

const SPEC: &str = r#"
name: shop
domains:
  - {domain: shop.example.com, type: PRIMARY}
  - {domain: example.org, wildcard: true}
  - {domain: late.example.com}
  - {domain: strict.example.com, minimum_tls_version: "1.3"}
  - {domain: loose.example.com}
services:
  - {name: web, image: {repository: a}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_are_served_over_https_with_the_certificates_of_the_directory() {
    let ca = Authority::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "shop", &["shop.example.com"], 0o600)
        .unwrap();
    ca.issue(
        dir.path(),
        "org",
        &["*.example.org", "strict.example.com"],
        0o600,
    )
    .unwrap();
    // A key others may read is refused, and its certificate not served.
    ca.issue(dir.path(), "loose", &["loose.example.com"], 0o644)
        .unwrap();
    let certs = Certificates::new(Some(dir.path().to_path_buf()), false);
    let problems = certs.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("must be readable by its owner only"),
        "{}",
        problems[0]
    );
    let s = serve(SPEC, Arc::clone(&certs)).await;
    let http = client(Some(&ca.pem), s.http);
    let https_url = |host: &str, path: &str| format!("https://{host}:{}{path}", s.https.port());
    let http_url = |host: &str, path: &str| format!("http://{host}:{}{path}", s.http.port());

    // By SNI, an exact name and a wildcard's; HTTP/2 by ALPN; the app hears it was HTTPS.
    for host in ["shop.example.com", "a.example.org"] {
        let r = http.get(https_url(host, "/x?y=1")).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{host}");
        assert_eq!(r.text().await.unwrap(), "web /x?y=1 https", "{host}");
    }
    // No certificate for the name: no handshake (and none is made up).
    for host in ["late.example.com", "loose.example.com"] {
        let e = http.get(https_url(host, "/")).send().await.unwrap_err();
        assert!(e.is_connect(), "{host}: {e:?}");
    }
    // Plain HTTP for a domain with a certificate: redirected to HTTPS, the path kept; but an
    // ACME challenge, a domain without a certificate, and the app's default host are served.
    let r = http
        .get(http_url("shop.example.com", "/cart?item=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        https_url("shop.example.com", "/cart?item=3").as_str()
    );
    for (host, path) in [
        ("shop.example.com", "/.well-known/acme-challenge/token"),
        ("late.example.com", "/"),
        ("shop.localhost", "/"),
    ] {
        let r = http.get(http_url(host, path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{host}{path}");
        assert_eq!(r.text().await.unwrap(), format!("web {path} http"));
    }

    // A certificate written to the directory is served once the table changes (or within
    // seconds).
    ca.issue(dir.path(), "late", &["late.example.com"], 0o600)
        .unwrap();
    s.ingress.set_app("app1", &parse_spec(SPEC).unwrap().spec);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match http.get(https_url("late.example.com", "/")).send().await {
            Ok(r) => {
                assert_eq!(r.text().await.unwrap(), "web / https");
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the new certificate is not served: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        certs
            .loaded()
            .iter()
            .map(|l| l.names.join(","))
            .collect::<Vec<_>>(),
        [
            "late.example.com",
            "*.example.org,strict.example.com",
            "shop.example.com"
        ]
    );

    // A domain that asks for TLS 1.3 refuses TLS 1.2; the others take it.
    let tls12 = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .resolve("strict.example.com", s.https)
        .resolve("a.example.org", s.https)
        .build()
        .unwrap();
    let port = s.https.port();
    assert!(
        tls12
            .get(format!("https://strict.example.com:{port}/"))
            .send()
            .await
            .is_err()
    );
    assert_eq!(
        tls12
            .get(format!("https://a.example.org:{port}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(https_url("strict.example.com", "/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificates_are_made_for_served_names_only() {
    let certs = Certificates::new(None, true);
    let s = serve(SPEC, certs).await;
    let http = client(None, s.http);
    let port = s.https.port();
    let r = http
        .get(format!("https://loose.example.com:{port}/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "web /a https");
    let unknown = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("nope.example.net", s.https)
        .build()
        .unwrap();
    let e = unknown
        .get(format!("https://nope.example.net:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(
        e.is_connect(),
        "no certificate for a name no app is served at: {e:?}"
    );
}

/// A backend that echoes every byte after an upgrade, answers `/events` with five
/// Server-Sent Events 200 ms apart, and anything else with its name.
async fn streaming_backend(name: &'static str) -> SocketAddr {
    use http_body_util::BodyExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |mut req: Request<hyper::body::Incoming>| async move {
                        if req.headers().contains_key(hyper::header::UPGRADE) {
                            let upgraded = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                if let Ok(up) = upgraded.await {
                                    let mut io = TokioIo::new(up);
                                    let mut buf = [0u8; 64];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            let r = Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .body(Full::new(Bytes::new()).boxed())
                                .unwrap();
                            return Ok::<_, Infallible>(r);
                        }
                        if req.uri().path() == "/events" {
                            let events = futures::stream::unfold(0u32, move |n| async move {
                                if n == 5 {
                                    return None;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let event = format!("data: {name} {n}\n\n");
                                Some((
                                    Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(
                                        event,
                                    ))),
                                    n + 1,
                                ))
                            });
                            let r = Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(http_body_util::StreamBody::new(events).boxed())
                                .unwrap();
                            return Ok(r);
                        }
                        Ok(Response::new(Full::new(Bytes::from(name)).boxed()))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_and_event_streams_pass_through_https_and_outlive_their_instances_drain() {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Authority::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "shop", &["shop.example.com"], 0o600)
        .unwrap();
    let certs = Certificates::new(Some(dir.path().to_path_buf()), false);
    let s = serve_with(SPEC, certs, streaming_backend("web-1").await).await;

    // A WebSocket-style upgrade over TLS (ALPN http/1.1), and an event stream.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("shop.example.com").unwrap();
    let mut ws = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    ws.write_all(b"GET /chat HTTP/1.1\r\nhost: shop.example.com\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        ws.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo(&mut ws, b"before").await;
    let http = client(Some(&ca.pem), s.http);
    let events = http
        .get(format!(
            "https://shop.example.com:{}/events",
            s.https.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut events = events.bytes_stream();

    // A rolling restart: a new instance joins, the old one drains. Both streams go on, new
    // requests go to the new one, and the drain waits for the upgraded connection.
    s.ingress
        .add("app1", "web", "web-2", streaming_backend("web-2").await);
    let drain = {
        let ingress = Arc::clone(&s.ingress);
        tokio::spawn(async move {
            ingress
                .drain("app1", "web", "web-1", Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = String::new();
    while let Some(chunk) = events.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_eq!(
        seen,
        "data: web-1 0\n\ndata: web-1 1\n\ndata: web-1 2\n\ndata: web-1 3\n\ndata: web-1 4\n\n",
        "every event of the draining instance arrived"
    );
    let fresh = http
        .get(format!("https://shop.example.com:{}/", s.https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.text().await.unwrap(), "web-2");
    echo(&mut ws, b"during the drain").await;
    assert!(
        !drain.is_finished(),
        "the drain waits for the upgraded connection"
    );
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("the drain ends once the connection closed")
        .unwrap();
}

/// Writes `word` on an upgraded connection and reads its echo.
async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut S, word: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(word).await.unwrap();
    let mut back = vec![0u8; word.len()];
    io.read_exact(&mut back).await.unwrap();
    assert_eq!(back, word);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acme_tls_alpn_handshake_gets_the_challenges_certificate_and_nothing_else() {
    let challenges = tempfile::tempdir().unwrap();
    let digest = "ab".repeat(32);
    std::fs::create_dir_all(challenges.path().join("tls-alpn-01")).unwrap();
    std::fs::write(
        challenges
            .path()
            .join("tls-alpn-01")
            .join("shop.example.com"),
        &digest,
    )
    .unwrap();
    let ingress = Ingress::new(IngressConfig {
        acme_challenges: Some(challenges.path().to_path_buf()),
        ..IngressConfig::default()
    });
    ingress.set_app("app1", &parse_spec(SPEC).unwrap().spec);
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(slipway_ingress::serve_tls(
        Arc::clone(&ingress),
        listener,
        Certificates::new(None, false),
        stop.clone(),
    ));
    let _stop = stop.drop_guard();
    let handshake = |name: &'static str| async move {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
        config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(rustls::pki_types::ServerName::try_from(name).unwrap(), tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let cert = session.peer_certificates().unwrap()[0].clone().into_owned();
        Ok::<_, std::io::Error>((session.alpn_protocol().map(<[u8]>::to_vec), cert))
    };
    let (alpn, cert) = handshake("shop.example.com").await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"acme-tls/1"[..]));
    // The acmeIdentifier extension (1.3.6.1.5.5.7.1.31) holds the digest.
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    let extension = parsed
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .expect("the acmeIdentifier extension");
    assert!(extension.critical);
    assert!(extension.value.ends_with(&[0xab; 32]));
    // A name without an answer gets no handshake at all.
    assert!(handshake("loose.example.com").await.is_err());
}

/// Accepts any certificate: the ACME server checks the extension, not the chain.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
