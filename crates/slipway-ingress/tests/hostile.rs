//! The ingress between clients and an instance that are out to harm each other, over real
//! HTTP on loopback: an instance that frames its answers wrongly on purpose, requests built
//! to be read two ways, a client that never reads its answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use slipway_ingress::IngressConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

const SPEC: &str = "name: shop\nservices:\n  - {name: web, image: {repository: a}}\n";

/// The ways the mis-framing instance answers, by the request's `mode`.
const MODES: usize = 9;

/// An instance that answers `/<secret>/<i>/<mode>` with its path in the body, framed wrongly
/// in every way but the first:
/// 0. right;
/// 1. the answer, then a second one no request asked for, in the same write;
/// 2. a `Content-Length` shorter than the body, whose rest is an answer of its own;
/// 3. a `Content-Length` longer than the body (the next answer on the connection would be
///    taken for the rest of it; a client gets this one every 90 requests);
/// 4. a `204` followed by a body that is an answer;
/// 5. a body after its answer to `HEAD` (the client sends `HEAD` for this mode);
/// 6. a `304` followed by a body that is an answer;
/// 7. the answer, then 2 ms later an answer to a request it never got;
/// 8. a head that is not HTTP.
async fn misframing_instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
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
                    let mode: usize = path.rsplit('/').next().unwrap_or("0").parse().unwrap_or(0);
                    let ok = |body: &str| {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let answer = match mode {
                        1 => format!("{}{}", ok(&path), ok(&format!("extra {path}"))),
                        2 => format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{}",
                            ok(&format!("under {path}"))
                        ),
                        3 => format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
                            path.len() + 200
                        ),
                        4 => format!(
                            "HTTP/1.1 204 No Content\r\n\r\n{}",
                            ok(&format!("after 204 {path}"))
                        ),
                        5 => ok(&format!("after HEAD {path}")),
                        6 => format!(
                            "HTTP/1.1 304 Not Modified\r\n\r\n{}",
                            ok(&format!("after 304 {path}"))
                        ),
                        8 => format!("HTZP/1.1 200 OK\r\n\r\n{path}"),
                        _ => ok(&path),
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if mode == 7 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let late = ok(&format!("never asked {path}"));
                        if stream.write_all(late.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Reads one answer as a client would, within `limit`: its status and its body (none for
/// `HEAD`, `204`, `304`). Every byte read is kept in `all`. `None` when the connection ended
/// or stalled, or what came is not an answer.
async fn read_one(
    conn: &mut TcpStream,
    head_request: bool,
    all: &mut Vec<u8>,
    limit: Duration,
) -> Option<(u16, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut fill = async |got: &mut Vec<u8>, all: &mut Vec<u8>| -> Option<()> {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                got.extend_from_slice(&buf[..n]);
                all.extend_from_slice(&buf[..n]);
                Some(())
            }
            _ => None,
        }
    };
    let end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        fill(&mut got, all).await?;
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(Some(0), |l| l.trim().parse().ok())?;
    let length = if head_request || status == 204 || status == 304 {
        0
    } else {
        length
    };
    while got.len() < end + length {
        fill(&mut got, all).await?;
    }
    if got.len() > end + length {
        // The client sent one request at a time: nothing may come after its answer.
        return None;
    }
    Some((status, got[end..].to_vec()))
}

/// What a client saw.
#[derive(Default, Debug)]
struct Tally {
    /// Answers relayed from the instance.
    own: usize,
    /// The ingress's 502s, 503s and 504s.
    refused: usize,
    /// Connections that ended or stalled in an answer.
    cut: usize,
}

/// One client: `count` requests for `/<secret>/<i>/<mode>` one after another, on a kept-alive
/// connection opened again whenever one ends. Every byte it receives is checked for the other
/// clients' secrets. `hyper`: its requests carry `Expect`, which the lean path leaves to
/// hyper and its connections to the instance.
async fn misframed_client(
    addr: SocketAddr,
    secret: String,
    others: Vec<String>,
    count: usize,
    hyper: bool,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut all = Vec::new();
    for i in 0..count {
        // The over-claiming answer costs the request timeout: it comes every 40 requests.
        let mode = match i % MODES {
            _ if i % 90 == 89 => 3,
            3 => 0,
            m => m,
        };
        let path = format!("/{secret}/{i}/{mode}");
        let method = if mode == 5 { "HEAD" } else { "GET" };
        let expect = if hyper {
            "Expect: 100-continue\r\n"
        } else {
            ""
        };
        let req = format!("{method} {path} HTTP/1.1\r\nHost: shop.localhost\r\n{expect}\r\n");
        // An answer that claims more than it sends stalls until the ingress gives up on it
        // (the lean path) or the client does (hyper's, which has no time limit on a body).
        let limit = Duration::from_secs(if mode == 3 { 2 } else { 5 });
        let answer = match conn.write_all(req.as_bytes()).await {
            Ok(()) => read_one(&mut conn, mode == 5, &mut all, limit).await,
            Err(_) => None,
        };
        match answer {
            // The answer is this client's own, whole or cut to its `Content-Length`, or
            // without a body: what matters is checked below, on every byte.
            Some((200 | 204 | 304, _)) => tally.own += 1,
            Some((502..=504, _)) => tally.refused += 1,
            Some((status, body)) => panic!(
                "{secret}: {status} {:?} for {path}",
                String::from_utf8_lossy(&body)
            ),
            None => {
                tally.cut += 1;
                conn = TcpStream::connect(addr).await.unwrap();
            }
        }
        for other in &others {
            let text = String::from_utf8_lossy(&all);
            assert!(
                !text.contains(other.as_str()),
                "{secret} was given bytes of {other}'s answers: {text:?}"
            );
        }
        all.clear();
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misframing_instance_never_hands_one_clients_answer_to_another() {
    let config = IngressConfig {
        request_timeout: Duration::from_millis(500),
        ..IngressConfig::default()
    };
    let (ingress, addr, _stop) = common::serve(config, SPEC).await;
    ingress.add("app1", "web", "i1", misframing_instance().await);
    let secrets: Vec<String> = (0..8)
        .map(|c| format!("secret{c:02}q{:08x}", std::process::id() ^ (c * 7919)))
        .collect();
    let started = Instant::now();
    // Half the clients on the lean path, half on hyper's.
    let clients: Vec<_> = secrets
        .iter()
        .enumerate()
        .map(|(c, s)| {
            let others = secrets.iter().filter(|o| *o != s).cloned().collect();
            tokio::spawn(misframed_client(addr, s.clone(), others, 270, c % 2 == 1))
        })
        .collect();
    let mut total = Tally::default();
    for c in clients {
        let t = c.await.unwrap();
        total.own += t.own;
        total.refused += t.refused;
        total.cut += t.cut;
    }
    eprintln!("{total:?} in {:?}", started.elapsed());
    // Every right answer and every mis-framed one that can be relayed whole came through.
    assert!(total.own >= 8 * 270 / 2, "{total:?}");
}

/// An instance that counts the bytes it is sent and the heads among them, and answers every
/// head with `200 ok`.
async fn counting_instance() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(AtomicUsize::new(0));
    let (counter, head_counter) = (Arc::clone(&received), Arc::clone(&heads));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (counter, heads) = (Arc::clone(&counter), Arc::clone(&head_counter));
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                        read.drain(..end + 4);
                        heads.fetch_add(1, Ordering::SeqCst);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            counter.fetch_add(n, Ordering::SeqCst);
                            read.extend_from_slice(&buf[..n]);
                        }
                    }
                }
            });
        }
    });
    (addr, received, heads)
}

/// Requests that HTTP/1.1 parsers can read two ways (RFC 9112 §6.3, §5, §3, and the usual
/// request smuggling corpus). `{h}` stands for the app's `Host` line.
const AMBIGUOUS: &[&str] = &[
    // CL.CL
    "POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\n{h}Content-Length: 5, 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\n{h}Content-Length: +5\r\n\r\nhello",
    "POST / HTTP/1.1\r\n{h}Content-Length: 0x5\r\n\r\nhello",
    "POST / HTTP/1.1\r\n{h}Content-Length: -1\r\n\r\n",
    "POST / HTTP/1.1\r\n{h}Content-Length : 5\r\n\r\nhello",
    // CL.TE and TE.CL
    "POST / HTTP/1.1\r\n{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    // TE variants
    "POST / HTTP/1.1\r\n{h}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\n{h}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\n{h}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\n{h}Transfer-Encoding: \tchunked\x0b\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    // Line endings
    "GET / HTTP/1.1\nHost: shop.localhost\n\n",
    "GET / HTTP/1.1\r\n{h}X: a\nY: b\r\n\r\n",
    "GET / HTTP/1.1\r\n{h}X: a\rY: b\r\n\r\n",
    // Header names and values
    "GET / HTTP/1.1\r\n{h}X: a\x00b\r\n\r\n",
    "GET / HTTP/1.1\r\n{h}X: a\x7fb\r\n\r\n",
    "GET / HTTP/1.1\r\n{h}X: a\r\n b\r\n\r\n",
    "GET / HTTP/1.1\r\n{h}X Y: a\r\n\r\n",
    "GET / HTTP/1.1\r\n{h}X@Y: a\r\n\r\n",
    "GET / HTTP/1.1\r\n{h}: a\r\n\r\n",
    "GET / HTTP/1.1\r\n{h}X-Foo : a\r\n\r\n",
    "GET / HTTP/1.1\r\n{h}NoColon\r\n\r\n",
    // Hosts
    "GET / HTTP/1.1\r\nX: a\r\n\r\n",
    "GET / HTTP/1.1\r\n{h}Host: other.localhost\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: shop.localhost/x\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: shop.localhost evil\r\n\r\n",
    // Request lines
    "GET  / HTTP/1.1\r\n{h}\r\n",
    "GET / a HTTP/1.1\r\n{h}\r\n",
    "GET foo HTTP/1.1\r\n{h}\r\n",
    "GET /\x7f HTTP/1.1\r\n{h}\r\n",
    "GET * HTTP/1.1\r\n{h}\r\n",
    "GET / HTTP/1.2\r\n{h}\r\n",
    "GET / HTTP/01.1\r\n{h}\r\n",
    "GET / http/1.1\r\n{h}\r\n",
    "G(ET / HTTP/1.1\r\n{h}\r\n",
];

/// Sends `request` on a new connection and returns the status of what comes back (0 when
/// nothing does within 5 s).
async fn status_of(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_can_be_read_two_ways_are_refused_on_either_path() {
    let (ingress, addr, _stop) = common::serve(IngressConfig::default(), SPEC).await;
    let (instance, received, heads) = counting_instance().await;
    ingress.add("app1", "web", "i1", instance);
    let mut wrong = Vec::new();
    for raw in AMBIGUOUS {
        let lean = raw.replace("{h}", "Host: shop.localhost\r\n");
        // The same request with an upgrade asked for: a request the lean path leaves to hyper.
        let line_end = lean.find('\n').unwrap() + 1;
        let upgrade = format!(
            "{}Upgrade: websocket\r\nConnection: Upgrade\r\n{}",
            &lean[..line_end],
            &lean[line_end..]
        );
        for (path, request) in [("lean", lean), ("hyper", upgrade)] {
            let status = status_of(addr, request.as_bytes()).await;
            if status != 400 {
                wrong.push(format!("{path}: {status} for {request:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused with 400:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "an ambiguous request reached the instance"
    );
    // The instance is there to be reached: a plain request is.
    let plain = b"GET / HTTP/1.1\r\nHost: shop.localhost\r\n\r\n";
    assert_eq!(status_of(addr, plain).await, 200);
    assert!(received.load(Ordering::SeqCst) > 0);
    assert_eq!(heads.load(Ordering::SeqCst), 1);

    // A request that hyper serves (`Expect`), then on the same connection an ambiguous one:
    // hyper gives the connection back after its one request, and the next head is checked.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        b"GET /first HTTP/1.1\r\nHost: shop.localhost\r\nExpect: 100-continue\r\n\r\n\
          POST / HTTP/1.1\r\nHost: shop.localhost\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let (first, _) = common::read_answer(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let (second, _) = common::read_answer(&mut conn).await;
    assert!(second.starts_with("HTTP/1.1 400"), "{second}");
    assert_eq!(
        heads.load(Ordering::SeqCst),
        2,
        "the ambiguous request reached the instance"
    );
}

/// An instance that answers `/big` with `BIG_ANSWER` bytes, counting those it managed to
/// write, and anything else with a short answer.
async fn big_instance() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(AtomicUsize::new(0));
    let (w, b) = (Arc::clone(&written), Arc::clone(&broken));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (written, broken) = (Arc::clone(&w), Arc::clone(&b));
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
                        if stream.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'x'; 64 * 1024];
                        for _ in 0..BIG_ANSWER / chunk.len() {
                            if stream.write_all(&chunk).await.is_err() {
                                broken.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            written.fetch_add(chunk.len(), Ordering::SeqCst);
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
    (addr, written, broken)
}

const BIG_ANSWER: usize = 128 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stalls_no_one_else() {
    let (ingress, addr, _stop) = common::serve(IngressConfig::default(), SPEC).await;
    let (instance, written, _) = big_instance().await;
    ingress.add("app1", "web", "i1", instance);
    let go = Arc::new(AtomicBool::new(true));
    // Clients that read their answers, one request after another.
    let readers: Vec<_> = (0..6)
        .map(|id| {
            let go = Arc::clone(&go);
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                let (mut count, mut slowest) = (0, Duration::ZERO);
                while go.load(Ordering::SeqCst) {
                    let path = format!("/{id}/{count}");
                    let started = Instant::now();
                    let req = format!("GET {path} HTTP/1.1\r\nHost: shop.localhost\r\n\r\n");
                    conn.write_all(req.as_bytes()).await.unwrap();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(10),
                        common::read_answer(&mut conn),
                    )
                    .await
                    .unwrap_or_else(|_| panic!("{path} got no answer within 10 s"));
                    assert_eq!(answer.1, path);
                    slowest = slowest.max(started.elapsed());
                    count += 1;
                }
                (count, slowest)
            })
        })
        .collect();
    // Meanwhile, clients that ask for a large answer and never read it, one every 50 ms.
    let mut sleepers = Vec::new();
    for _ in 0..8 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /big HTTP/1.1\r\nHost: shop.localhost\r\n\r\n")
            .await
            .unwrap();
        sleepers.push(conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    go.store(false, Ordering::SeqCst);
    let mut answered = 0;
    for r in readers {
        let (count, slowest) = r.await.unwrap();
        answered += count;
        // Generous for a loaded machine: a reader stalled behind a sleeper never gets its
        // answer at all.
        assert!(
            slowest < Duration::from_secs(3),
            "a client that reads waited {slowest:?} for an answer"
        );
    }
    assert!(answered > 6 * 10, "the readers ran: {answered} answers");
    // What the instance could write towards the clients that do not read is bounded by the
    // sockets' buffers and a few parts per connection, not by the answers' size.
    let per_sleeper = written.load(Ordering::SeqCst) / sleepers.len();
    eprintln!(
        "{answered} answers to readers; {per_sleeper} bytes per unread answer taken from the instance"
    );
    assert!(
        per_sleeper < BIG_ANSWER / 2,
        "{per_sleeper} bytes of each unread answer were taken from the instance"
    );
}
