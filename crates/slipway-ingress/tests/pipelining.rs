//! The ingress's connections to an instance, over real HTTP, with instances written by hand so
//! that what reaches them can be seen: each client connection has its own, and a connection
//! to an instance never carries the requests of two clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use slipway_ingress::{Ingress, IngressConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};

mod common;

const BIG: usize = 100_000;
const SPEC: &str = "name: shop\nservices:\n  - {name: web, image: {repository: a}}\n";

/// What an instance saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Requests that were already there, whole or in part, when the one before them on the
    /// same connection was read: sent before its answer, that is pipelined.
    pipelined: AtomicUsize,
    /// Connections that carried the requests of more than one client (the first segment of
    /// a path, after `/big` or `/slow`, names its client).
    mixed: AtomicUsize,
}

/// The client a path names: `/<client>/...`, `/big/<client>/...`, `/slow/<client>`.
fn client_of(path: &str) -> &str {
    path.split('/')
        .find(|s| !s.is_empty() && *s != "big" && *s != "slow")
        .unwrap_or("")
}

/// How the instance behaves.
#[derive(Clone, Copy, PartialEq)]
enum Instance {
    /// Answers each request with its path; `/slow...` after 2 s; `/big...` with its path
    /// followed by 100,000 `x`, written in two parts.
    Echo,
    /// Answers this many requests on each connection, then closes it without saying so,
    /// whatever else came.
    ClosesAfter(usize),
}

async fn instance(kind: Instance) -> (SocketAddr, Arc<Seen>) {
    let (addr, seen, _) = stoppable_instance(kind).await;
    (addr, seen)
}

/// An instance that stops, as a container does, when the token is cancelled: it closes its
/// listener and every connection at once.
async fn stoppable_instance(kind: Instance) -> (SocketAddr, Arc<Seen>, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => return,
                },
                () = stopped.cancelled() => return,
            };
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let (counts, stopped) = (Arc::clone(&counts), stopped.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = serve(stream, kind, counts) => {}
                    () = stopped.cancelled() => {}
                }
            });
        }
    });
    (addr, seen, stop)
}

async fn serve(mut stream: TcpStream, kind: Instance, seen: Arc<Seen>) {
    let mut answered = 0;
    let mut client: Option<String> = None;
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
        seen.requests.fetch_add(1, Ordering::SeqCst);
        if !read.is_empty() {
            seen.pipelined.fetch_add(1, Ordering::SeqCst);
        }
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        match &client {
            None => client = Some(client_of(&path).to_string()),
            Some(c) if c != client_of(&path) => {
                seen.mixed.fetch_add(1, Ordering::SeqCst);
            }
            Some(_) => {}
        }
        if path.starts_with("/slow") {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let padding = if path.starts_with("/big") { BIG } else { 0 };
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
            path.len() + padding
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if padding > 0 && stream.write_all(&[b'x'; BIG]).await.is_err() {
            return;
        }
        answered += 1;
        if kind == Instance::ClosesAfter(answered) {
            return;
        }
    }
}

struct Setup {
    ingress: Arc<Ingress>,
    addr: SocketAddr,
    _stop: DropGuard,
}

async fn setup(pipeline_depth: usize) -> Setup {
    let config = IngressConfig {
        pipeline_depth,
        ..IngressConfig::default()
    };
    let (ingress, addr, stop) = common::serve(config, SPEC).await;
    Setup {
        ingress,
        addr,
        _stop: stop,
    }
}

/// One client: `count` GETs of `/<client>/<i>` (every fifth `/big/<client>/<i>`) one after
/// another on one kept-alive connection, each answer checked to be its own. Returns the
/// slowest answer's time.
async fn client(addr: SocketAddr, id: usize, count: usize, big: bool) -> Duration {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..count {
        let path = match i % 5 {
            4 if big => format!("/big/{id}/{i}"),
            _ => format!("/{id}/{i}"),
        };
        let started = Instant::now();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: shop.localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (status, mut body) = read_answer(&mut conn).await;
        slowest = slowest.max(started.elapsed());
        if path.starts_with("/big") {
            assert_eq!(body.len(), path.len() + BIG, "{path}");
            assert!(body[path.len()..].bytes().all(|b| b == b'x'), "{path}");
            body.truncate(path.len());
        }
        assert_eq!((status.as_str(), body.as_str()), ("200", path.as_str()));
    }
    slowest
}

/// Reads one answer: its status and its body.
async fn read_answer(conn: &mut TcpStream) -> (String, String) {
    let (head, body) = common::read_answer(conn).await;
    let status = head.split(' ').nth(1).unwrap_or("").to_string();
    (status, body)
}

/// `clients` clients at once, each sending `count` requests.
async fn load(addr: SocketAddr, clients: usize, count: usize, big: bool) -> Duration {
    let tasks: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(client(addr, id, count, big)))
        .collect();
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await.unwrap());
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_each_get_their_own_answers_on_connections_of_their_own() {
    let s = setup(IngressConfig::default().pipeline_depth).await;
    let (addr, seen) = instance(Instance::Echo).await;
    s.ingress.add("app1", "web", "i1", addr);
    load(s.addr, 1, 3, false).await;
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    load(s.addr, 48, 60, true).await;
    let (connections, requests, mixed) = (
        seen.connections.load(Ordering::SeqCst),
        seen.requests.load(Ordering::SeqCst),
        seen.mixed.load(Ordering::SeqCst),
    );
    assert_eq!(requests, 3 + 48 * 60);
    assert_eq!(
        mixed, 0,
        "a connection to the instance carried two clients' requests"
    );
    // A client connection keeps its connection to the instance from one request to the next.
    assert_eq!(
        connections,
        1 + 48,
        "49 kept-alive clients took {connections} connections to the instance"
    );

    // A client that pipelines its own requests gets every answer, in order, on its one
    // connection to the instance.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let batch: String = (0..10)
        .map(|i| format!("GET /p/{i} HTTP/1.1\r\nHost: shop.localhost\r\n\r\n"))
        .collect();
    conn.write_all(batch.as_bytes()).await.unwrap();
    for i in 0..10 {
        assert_eq!(
            read_answer(&mut conn).await,
            ("200".into(), format!("/p/{i}"))
        );
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1 + 48 + 1);
    assert_eq!(seen.mixed.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_waits_behind_a_slow_answer() {
    let s = setup(IngressConfig::default().pipeline_depth).await;
    let (addr, _) = instance(Instance::Echo).await;
    s.ingress.add("app1", "web", "i1", addr);
    load(s.addr, 1, 3, false).await;
    // Slow requests, then, once they have waited a moment, a burst of quick ones from other
    // clients: none may be queued behind a slow answer.
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let addr = s.addr;
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                let req = format!("GET /slow/{i} HTTP/1.1\r\nHost: shop.localhost\r\n\r\n");
                conn.write_all(req.as_bytes()).await.unwrap();
                read_answer(&mut conn).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let slowest = load(s.addr, 16, 5, true).await;
    assert!(
        slowest < Duration::from_secs(1),
        "a quick request took {slowest:?} while slow ones were answered"
    );
    for (i, t) in slow.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), ("200".into(), format!("/slow/{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_closes_each_connection_after_an_answer_is_never_pipelined_to() {
    let s = setup(IngressConfig::default().pipeline_depth).await;
    let (addr, seen) = instance(Instance::ClosesAfter(1)).await;
    s.ingress.add("app1", "web", "i1", addr);
    load(s.addr, 24, 20, true).await;
    assert_eq!(seen.requests.load(Ordering::SeqCst), 24 * 20);
    assert_eq!(seen.pipelined.load(Ordering::SeqCst), 0);
    assert_eq!(seen.mixed.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_connection_the_instance_closes_are_sent_again_on_the_clients_own_next() {
    let s = setup(IngressConfig::default().pipeline_depth).await;
    let (addr, seen) = instance(Instance::ClosesAfter(3)).await;
    s.ingress.add("app1", "web", "i1", addr);
    // A request given to a connection as the instance closes it is sent again on a new one.
    load(s.addr, 24, 20, false).await;
    let requests = seen.requests.load(Ordering::SeqCst);
    assert!(requests >= 24 * 20, "{requests}");
    assert_eq!(seen.pipelined.load(Ordering::SeqCst), 0);
    assert_eq!(seen.mixed.load(Ordering::SeqCst), 0);
}

/// One client as [`client`], for as long as `go` is set: the count of its requests.
async fn client_until(addr: SocketAddr, id: usize, go: Arc<AtomicBool>) -> usize {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut count = 0;
    while go.load(Ordering::SeqCst) {
        let path = format!("/{id}/{count}");
        let req = format!("GET {path} HTTP/1.1\r\nHost: shop.localhost\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut conn).await, ("200".into(), path));
        count += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_drained_and_stopped_under_load_fail_no_request() {
    let s = setup(IngressConfig::default().pipeline_depth).await;
    let (a, seen_a, stop_a) = stoppable_instance(Instance::Echo).await;
    s.ingress.add("app1", "web", "a", a);
    let go = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..32)
        .map(|id| tokio::spawn(client_until(s.addr, id, Arc::clone(&go))))
        .collect();
    // Two rollout steps as the engine takes them: the new instance joins, the old one is
    // drained, then stopped with its connections closed.
    let (b, seen_b, stop_b) = stoppable_instance(Instance::Echo).await;
    let (c, _, stop_c) = stoppable_instance(Instance::Echo).await;
    for (old, stop_old, new_id, new) in [("a", &stop_a, "b", b), ("b", &stop_b, "c", c)] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.ingress.add("app1", "web", new_id, new);
        s.ingress
            .drain("app1", "web", old, Duration::from_secs(5))
            .await;
        stop_old.cancel();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    go.store(false, Ordering::SeqCst);
    let mut answered = 0;
    for c in clients {
        answered += c.await.unwrap();
    }
    stop_c.cancel();
    assert!(answered > 32 * 10, "the load ran: {answered} requests");
    let mixed = seen_a.mixed.load(Ordering::SeqCst) + seen_b.mixed.load(Ordering::SeqCst);
    assert_eq!(
        mixed, 0,
        "a connection to an instance carried two clients' requests"
    );
}
