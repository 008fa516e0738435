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

/// Set in the child process that [`running_out_of_descriptors_pauses_accepting_until_some_are_free`]
/// starts.
const CHILD: &str = "SLIPWAY_INGRESS_TEST_LOW_NOFILE";

/// The CPU time this process has used, in clock ticks (user and system), read from its
/// `/proc/self/stat`, opened beforehand (no descriptor may be free when it is read).
fn cpu_ticks(file: &mut std::fs::File) -> u64 {
    use std::io::{Read, Seek};
    file.rewind().unwrap();
    let mut stat = String::new();
    file.read_to_string(&mut stat).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_pauses_accepting_until_some_are_free() {
    if std::env::var_os(CHILD).is_none() {
        // This very test again, in a process of its own with few descriptors, so that
        // running out of them harms no other test.
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "ulimit -n 256 && exec \"$0\" --exact \
                 running_out_of_descriptors_pauses_accepting_until_some_are_free --nocapture",
            )
            .arg(&exe)
            .env(CHILD, "1")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the test under a low descriptor limit failed"
        );
        return;
    }
    let (ingress, addr, _stop) = common::serve(IngressConfig::default(), SPEC).await;
    let (instance, _) = instance().await;
    ingress.add("app1", "web", "i1", instance);
    // Answered only once every ingress thread has started: from here on the ingress holds all
    // the descriptors it keeps, and lets go of none but those of its connections.
    let mut warm = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get(&mut warm, "/warm").await, "/warm");

    // Every descriptor taken but one, which the client's connection takes: the ingress
    // cannot accept it.
    let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
    let mut hoard = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hoard.push(f);
    }
    assert!(!hoard.is_empty());
    hoard.pop();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /late HTTP/1.1\r\nHost: shop.localhost\r\n\r\n")
        .await
        .unwrap();
    // Meanwhile the accept loop waits between tries rather than spinning on the error.
    let (ticks, started) = (cpu_ticks(&mut stat), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(&mut stat) - ticks;
    let elapsed = started.elapsed();
    // 100 ticks a second: less than a quarter of one CPU over the wait.
    assert!(
        used < 50,
        "{used} ticks of CPU in {elapsed:?} while accepting failed"
    );
    let mut probe = [0u8; 1];
    let read = client.try_read(&mut probe);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the client was served although no descriptor was free: {read:?} {:?}",
        String::from_utf8_lossy(&probe)
    );
    // Descriptors free again: the connection that waited is accepted and answered.
    drop(hoard);
    let answer = tokio::time::timeout(Duration::from_secs(5), common::read_answer(&mut client))
        .await
        .expect("the connection that came while descriptors ran out was never served");
    assert_eq!(answer.1, "/late");
    // And the warm connection is served still.
    assert_eq!(get(&mut warm, "/again").await, "/again");
}
