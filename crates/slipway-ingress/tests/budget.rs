//! The ingress's own limits, over real HTTP on loopback: how long it waits for a client to
//! read, and how many client connections it keeps open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use slipway_ingress::IngressConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

const SPEC: &str = "name: shop\nservices:\n  - {name: web, image: {repository: a}}\n";
const BIG_ANSWER: usize = 128 * 1024 * 1024;

/// An instance that answers `/big` with `BIG_ANSWER` bytes and counts the answers it could not
/// finish because the connection was closed; anything else gets its path.
async fn instance() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let broken = Arc::new(AtomicUsize::new(0));
    let b = Arc::clone(&broken);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let broken = Arc::clone(&b);
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&read[..end]).into_owned();
                    read.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    if path == "/big" {
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG_ANSWER}\r\n\r\n");
                        let chunk = vec![b'x'; 64 * 1024];
                        let mut ok = stream.write_all(head.as_bytes()).await.is_ok();
                        for _ in 0..BIG_ANSWER / chunk.len() {
                            ok = ok && stream.write_all(&chunk).await.is_ok();
                        }
                        if !ok {
                            broken.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        continue;
                    }
                    let ok = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
                        path.len()
                    );
                    if stream.write_all(ok.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, broken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_for_the_write_timeout_loses_its_connection() {
    let config = IngressConfig {
        client_write_timeout: Duration::from_secs(1),
        ..IngressConfig::default()
    };
    let (ingress, addr, _stop) = common::serve(config, SPEC).await;
    let (instance, broken) = instance().await;
    ingress.add("app1", "web", "i1", instance);
    // On the lean path, and on hyper's (HTTP/1.0).
    let mut sleepers = Vec::new();
    for request in [
        "GET /big HTTP/1.1\r\nHost: shop.localhost\r\n\r\n",
        "GET /big HTTP/1.0\r\nHost: shop.localhost\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        sleepers.push(conn);
    }
    // Each connection to the instance is closed under its answer once the write timeout has
    // passed without the client reading.
    let started = Instant::now();
    while broken.load(Ordering::SeqCst) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the clients that read nothing still hold their answers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the client's connection is closed: reading it drains what was buffered, then ends.
    for mut conn in sleepers {
        let mut buf = vec![0u8; 1 << 20];
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "a client connection that read nothing stayed open"
        );
    }
}

/// Sends a GET on `conn` and reads its answer's body.
async fn get(conn: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: shop.localhost\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    common::read_answer(conn).await.1
}

/// What comes back on `conn` until its answer's end, unless it is closed first.
async fn try_answer(conn: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length: ").map(str::to_string))?
                .trim()
                .parse()
                .ok()?;
            if body.len() >= length {
                return Some(text);
            }
        }
        match tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// Whether `conn` is closed by the ingress within `limit` without an answer.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_budget_are_closed_at_once_and_the_budget_comes_back() {
    let config = IngressConfig {
        max_connections: 5,
        ..IngressConfig::default()
    };
    let (ingress, addr, _stop) = common::serve(config, SPEC).await;
    let (instance, _) = instance().await;
    ingress.add("app1", "web", "i1", instance);
    let mut open = Vec::new();
    for i in 0..5 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        assert_eq!(get(&mut conn, &format!("/{i}")).await, format!("/{i}"));
        open.push(conn);
    }
    // Over the budget: closed as soon as accepted, without an answer, many times over.
    for _ in 0..50 {
        let started = Instant::now();
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /x HTTP/1.1\r\nHost: shop.localhost\r\n\r\n")
            .await;
        assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // The connections within the budget are served still.
    for (i, conn) in open.iter_mut().enumerate() {
        assert_eq!(
            get(conn, &format!("/again/{i}")).await,
            format!("/again/{i}")
        );
    }
    // A connection that closes gives its place back.
    for round in 0..20 {
        drop(open.pop());
        let started = Instant::now();
        let conn = loop {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let req = format!("GET /r/{round} HTTP/1.1\r\nHost: shop.localhost\r\n\r\n");
            let _ = conn.write_all(req.as_bytes()).await;
            if let Some(answer) = try_answer(&mut conn).await {
                assert!(answer.ends_with(&format!("/r/{round}")), "{answer}");
                break conn;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the place of a closed connection did not come back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        open.push(conn);
    }
}
