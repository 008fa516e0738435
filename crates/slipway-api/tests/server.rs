//! The API server's limits over real HTTP and HTTPS on loopback: slow headers and slow TLS
//! handshakes are cut, connections beyond the cap wait until a slot frees, idle connections
//! are closed, and a long answer is not idle.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use slipway_api::server::{ServerConfig, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

struct Server {
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    scheme: &'static str,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }
}

/// `/` answers `ok`; `/slow` sends `a`, waits 2.5 s, then sends `b`.
async fn start(tls: bool, config: ServerConfig) -> Server {
    let router = Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            let chunks = futures::stream::unfold(0, |i| async move {
                match i {
                    0 => Some((Ok::<_, std::io::Error>("a"), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(2500)).await;
                        Some((Ok("b"), 2))
                    }
                    _ => None,
                }
            });
            Body::from_stream(chunks)
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let (acceptor, client) = if tls {
        let files = slipway_api::tls::self_signed(
            &dir.path().join("tls"),
            &["127.0.0.1".to_string(), "localhost".to_string()],
        )
        .unwrap();
        let pem = std::fs::read(&files.cert).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        (Some(slipway_api::tls::acceptor(&files).unwrap()), client)
    } else {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        (None, client)
    };
    tokio::spawn(serve(listener, router, acceptor, config, stop.clone()));
    Server {
        addr,
        client,
        scheme: if tls { "https" } else { "http" },
        stop,
        _dir: dir,
    }
}

/// Sends one byte of `bytes` (over and over) every 200 ms until the server closes the
/// connection; returns how long that took (at most `limit`).
async fn trickle_until_closed(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 256];
    let mut next = bytes.iter().cycle();
    while started.elapsed() < limit {
        let byte = *next.next().unwrap();
        if s.write_all(&[byte]).await.is_err() {
            return started.elapsed();
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            // Over HTTP/1 hyper may answer a timeout with a 408 before closing.
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    started.elapsed()
}

#[tokio::test]
async fn slow_headers_and_slow_handshakes_are_cut() {
    for tls in [false, true] {
        let server = start(
            tls,
            ServerConfig {
                header_timeout: Duration::from_secs(1),
                ..ServerConfig::default()
            },
        )
        .await;
        // An HTTP/1 request head, the HTTP/2 preface (which hyper reads before it knows the
        // protocol), nothing at all: each is closed within about the header timeout.
        for bytes in [
            &b"GET / HTTP/1.1\r\nX: "[..],
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        ] {
            let took = trickle_until_closed(server.addr, bytes, Duration::from_secs(6)).await;
            assert!(
                took < Duration::from_secs(3),
                "tls={tls}: a client sending a byte every 200 ms was kept {took:?}"
            );
        }
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut [0u8; 64]))
            .await
            .unwrap_or_else(|_| panic!("tls={tls}: a silent connection is kept beyond 3 s"));
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        // A client that sends its request at once is served.
        let r = server.client.get(server.url("/")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "ok");
    }
}

#[tokio::test]
async fn beyond_the_cap_connections_wait_until_a_slot_frees() {
    for tls in [false, true] {
        let server = start(
            tls,
            ServerConfig {
                max_connections: 3,
                header_timeout: Duration::from_secs(2),
                ..ServerConfig::default()
            },
        )
        .await;
        // Three silent connections take every slot.
        let mut holders = Vec::new();
        for _ in 0..3 {
            holders.push(TcpStream::connect(server.addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A fourth waits in the backlog: not answered while the three hold on...
        let started = Instant::now();
        let r = server.client.get(server.url("/")).send().await.unwrap();
        let waited = started.elapsed();
        assert_eq!(r.text().await.unwrap(), "ok");
        // ...and served once the header timeout frees their slots.
        assert!(
            waited >= Duration::from_millis(1500),
            "tls={tls}: answered after {waited:?}, while every slot was taken"
        );
        drop(holders);
    }
}

#[tokio::test]
async fn idle_connections_are_closed_but_a_long_answer_is_not_idle() {
    for tls in [false, true] {
        let server = start(
            tls,
            ServerConfig {
                max_connections: 16,
                header_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(1),
            },
        )
        .await;
        // An answer with 2.5 s of silence in it arrives whole.
        let body = server
            .client
            .get(server.url("/slow"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ab", "tls={tls}");
        if tls {
            continue;
        }
        // A kept-alive HTTP/1 connection left idle is closed after about 1 s (the header
        // timeout, 30 s, is not what closes it).
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 1024];
        let mut got = Vec::new();
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("the idle connection is closed within 5 s")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let idle = started.elapsed();
        assert!(
            idle >= Duration::from_millis(800) && idle < Duration::from_secs(4),
            "closed after {idle:?}"
        );
    }
}
