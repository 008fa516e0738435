//! The ingress over real HTTP, with backends that run in the test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use slipway_ingress::{Ingress, IngressConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::read_answer;

/// A backend that answers with its name and the headers it got; `/slow` takes 400 ms, `/big`
/// answers with 256 KiB; an upgrade request is switched to an echo of every byte.
async fn backend(name: &'static str) -> SocketAddr {
    counting_backend(name).await.0
}

/// [`backend`], with the count of the connections it accepted.
async fn counting_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |mut req: Request<hyper::body::Incoming>| async move {
                        if req.headers().contains_key(hyper::header::UPGRADE) {
                            let upgraded = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
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
                                .status(StatusCode::SWITCHING_PROTOCOLS)
                                .header("connection", "upgrade")
                                .header("upgrade", "echo")
                                .body(Full::new(Bytes::new()).boxed())
                                .unwrap();
                            return Ok::<_, Infallible>(r);
                        }
                        if req.uri().path() == "/echo" {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            return Ok(Response::new(Full::new(body).boxed()));
                        }
                        if req.uri().path() == "/chunked" {
                            // A body of unknown length, sent chunked, in three parts.
                            let parts = ["one ", "two ", "three"]
                                .map(|p| Ok::<_, Infallible>(Frame::data(Bytes::from(p))));
                            let body = StreamBody::new(futures::stream::iter(parts));
                            return Ok(Response::new(body.boxed()));
                        }
                        if req.uri().path() == "/big" {
                            let big = Bytes::from(vec![b'x'; 256 * 1024]);
                            return Ok(Response::new(Full::new(big).boxed()));
                        }
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(400)).await;
                        }
                        let mut text = format!("{name} {}\n", req.uri());
                        for (k, v) in req.headers() {
                            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("")));
                        }
                        Ok(Response::new(Full::new(Bytes::from(text)).boxed()))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, accepted)
}

struct Setup {
    ingress: Arc<Ingress>,
    addr: SocketAddr,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
}

async fn setup(spec: &str) -> Setup {
    let config = IngressConfig {
        max_body_bytes: 1024,
        ..IngressConfig::default()
    };
    let (ingress, addr, stop) = common::serve(config, spec).await;
    let http = reqwest::Client::builder()
        .resolve("shop.localhost", addr)
        .resolve("nope.localhost", addr)
        .build()
        .unwrap();
    Setup {
        ingress,
        addr,
        http,
        _stop: stop,
    }
}

const SPEC: &str = r#"
name: shop
services:
  - {name: web, image: {repository: a}}
  - {name: api, image: {repository: a}}
ingress:
  rules:
    - {match: {path: {prefix: /}}, component: {name: web}}
    - {match: {path: {prefix: /api}}, component: {name: api}}
"#;

impl Setup {
    async fn get(&self, host: &str, path: &str) -> (u16, String) {
        let port = self.addr.port();
        let r = self
            .http
            .get(format!("http://{host}:{port}{path}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

#[tokio::test]
async fn routes_forwards_headers_and_spreads_load() {
    let s = setup(SPEC).await;
    let (a, b, api) = (backend("a").await, backend("b").await, backend("api").await);
    s.ingress.add("app1", "web", "a", a);
    s.ingress.add("app1", "web", "b", b);
    s.ingress.add("app1", "api", "api", api);

    let (status, body) = s.get("shop.localhost", "/api/users?x=1").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("api /users?x=1\n"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(
        body.contains(&format!(
            "x-forwarded-host: shop.localhost:{}",
            s.addr.port()
        )),
        "{body}"
    );

    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let (_, body) = s.get("shop.localhost", "/").await;
        *seen.entry(body[..1].to_string()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both instances take requests: {seen:?}");

    let (status, body) = s.get("nope.localhost", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (404, "no app is served at nope.localhost\n")
    );

    let big = "x".repeat(2000);
    let r = s
        .http
        .post(format!("http://shop.localhost:{}/", s.addr.port()))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // HTTP/2 from clients (prior knowledge on plain TCP).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("shop.localhost", s.addr)
        .resolve("nope.localhost", s.addr)
        .build()
        .unwrap();
    let h2_answer = |host: &'static str, path: &'static str| {
        let h2 = &h2;
        async move {
            let r = h2
                .get(format!("http://{host}:{}{path}", s.addr.port()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = h2_answer("shop.localhost", "/api/").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("api /"), "{body}");
    // hyper's path routes the same way, and gives the same answers of its own.
    assert_eq!(
        h2_answer("nope.localhost", "/").await,
        (404, "no app is served at nope.localhost\n".into())
    );
    s.ingress.eject("a");
    s.ingress.eject("b");
    assert_eq!(
        h2_answer("shop.localhost", "/").await,
        (503, "no instance of web is ready\n".into())
    );
}

#[tokio::test]
async fn no_ready_instance_is_503_and_an_unsent_request_goes_to_another() {
    let s = setup(SPEC).await;
    let (status, body) = s.get("shop.localhost", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "no instance of web is ready\n")
    );

    // An instance whose port refuses connections, beside one that works.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    s.ingress.add("app1", "web", "dead", dead);
    s.ingress.add("app1", "web", "live", backend("live").await);
    for _ in 0..10 {
        let (status, body) = s.get("shop.localhost", "/").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("live"), "{body}");
    }
}

#[tokio::test]
async fn draining_finishes_requests_in_flight_and_takes_no_new_ones() {
    let s = setup(SPEC).await;
    s.ingress.add("app1", "web", "a", backend("a").await);
    let slow = {
        let http = s.http.clone();
        let port = s.addr.port();
        tokio::spawn(async move {
            http.get(format!("http://shop.localhost:{port}/slow"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.ingress.add("app1", "web", "b", backend("b").await);
    let t = Instant::now();
    let ingress = Arc::clone(&s.ingress);
    let drain = tokio::spawn(async move {
        ingress
            .drain("app1", "web", "a", Duration::from_secs(5))
            .await;
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        let (_, body) = s.get("shop.localhost", "/").await;
        assert!(
            body.starts_with('b'),
            "a draining instance takes no new request: {body}"
        );
    }
    drain.await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "the drain waited for the slow request"
    );
    assert!(
        slow.await.unwrap().starts_with("a /slow"),
        "the request in flight finished"
    );
    assert_eq!(s.ingress.ready_count("app1", "web"), 1);
}

#[tokio::test]
async fn upgrades_are_passed_through() {
    let s = setup(SPEC).await;
    s.ingress.add("app1", "web", "a", backend("a").await);
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: shop.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    // A 101 has no body: what follows its head is the new protocol's.
    let (head, _) = read_answer(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    conn.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn connections_to_instances_are_kept_alive_and_reused() {
    let s = setup(SPEC).await;
    let (web, accepted) = counting_backend("web").await;
    s.ingress.add("app1", "web", "w1", web);
    for i in 0..100 {
        let path = if i % 2 == 0 { "/a" } else { "/big" };
        let (status, body) = s.get("shop.localhost", path).await;
        assert_eq!(status, 200);
        if path == "/big" {
            assert_eq!(body.len(), 256 * 1024);
        } else {
            assert!(body.starts_with("web /a"), "{body}");
        }
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "100 requests one after another took {n} connections to the instance"
    );

    // A response the client walks away from half-way does not leave its connection in the
    // pool for the next request.
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(b"GET /big HTTP/1.1\r\nHost: shop.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let _ = raw.read(&mut first).await.unwrap();
    drop(raw);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        let (status, body) = s.get("shop.localhost", "/big").await;
        assert_eq!((status, body.len()), (200, 256 * 1024));
    }
}

#[tokio::test]
async fn bodies_heads_and_chunked_answers_pass_through_on_one_connection() {
    let s = setup(SPEC).await;
    s.ingress.add("app1", "web", "a", backend("a").await);
    let url = |path: &str| format!("http://shop.localhost:{}{path}", s.addr.port());

    // A small body goes out with its request.
    let r = s
        .http
        .post(url("/echo"))
        .body("ping pong")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "ping pong".into())
    );
    // A chunked answer is relayed whole.
    let r = s.http.get(url("/chunked")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "one two three");
    // HEAD: the length of what GET would send, and no body.
    let r = s.http.head(url("/big")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "262144");
    assert!(r.bytes().await.unwrap().is_empty());

    // Pipelined on one raw connection: two requests in one write, then a chunked request
    // body (which hyper serves), then plain requests again, answered in order.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(
        b"GET /one HTTP/1.1\r\nHost: shop.localhost\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: shop.localhost\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let (head, body) = read_answer(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.starts_with("a /one\n"), "{body}");
    let (_, body) = read_answer(&mut conn).await;
    assert_eq!(body, "hello");
    conn.write_all(
        b"POST /echo HTTP/1.1\r\nHost: shop.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
          GET /two HTTP/1.1\r\nHost: shop.localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (_, body) = read_answer(&mut conn).await;
    assert_eq!(body, "abcde");
    let (_, body) = read_answer(&mut conn).await;
    assert!(body.starts_with("a /two\n"), "{body}");
    // Asked to close, the ingress closes.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    // A request the ingress answers itself keeps the connection for the next one.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(
        b"GET / HTTP/1.1\r\nHost: nope.localhost\r\n\r\nGET /three HTTP/1.1\r\nHost: shop.localhost\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, body) = read_answer(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(body, "no app is served at nope.localhost\n");
    let (_, body) = read_answer(&mut conn).await;
    assert!(body.starts_with("a /three\n"), "{body}");
}

/// When an instance written by hand closes a connection.
#[derive(Clone, Copy, PartialEq)]
enum Closes {
    /// Right after its answer, without saying so.
    AfterAnswer,
    /// When a second request comes on it, without answering it: as a server whose keep-alive
    /// time ran out just as the request came.
    AtSecondRequest,
    /// Never: it keeps every connection.
    Never,
}

/// An instance written by hand: it answers requests with `answer` and closes connections as
/// `closes` says. It counts the connections.
async fn raw_backend(answer: &'static str, closes: Closes) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = 0;
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    read.extend_from_slice(&buf[..n]);
                    while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                        read.drain(..end + 4);
                        if closes == Closes::AtSecondRequest && answered == 1 {
                            return;
                        }
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        answered += 1;
                        if closes == Closes::AfterAnswer {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn answers_without_a_length_and_connections_the_instance_closed() {
    let s = setup(SPEC).await;
    let url = format!("http://shop.localhost:{}/", s.addr.port());

    // No length: the body ends when the instance closes, and so does the client's connection.
    let (until_close, _) =
        raw_backend("HTTP/1.1 200 OK\r\n\r\nto the end", Closes::AfterAnswer).await;
    s.ingress.add("app1", "web", "u", until_close);
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(r.text().await.unwrap(), "to the end");
    s.ingress.eject("u");

    // Instances that close kept connections: after each answer, or as the next request comes.
    // Every request gets its answer all the same, sent again on a new connection when the
    // kept one was closed under it.
    for (id, closes) in [("c1", Closes::AfterAnswer), ("c2", Closes::AtSecondRequest)] {
        let (closing, accepted) =
            raw_backend("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", closes).await;
        s.ingress.add("app1", "web", id, closing);
        for i in 0..20 {
            let r = s.http.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{id}: request {i}");
            assert_eq!(r.text().await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20, "{id}");
        s.ingress.eject(id);
    }

    // An answer that is not HTTP is a 502 that says so.
    let (garbage, _) = raw_backend("SSH-2.0-OpenSSH\r\n\r\n", Closes::AfterAnswer).await;
    s.ingress.add("app1", "web", "g", garbage);
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with("web answered with something that is not HTTP"),
        "{text}"
    );
}

/// The lines of an echoed or relayed head that name a header, lowercased up to the colon.
fn header_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn headers_of_one_connection_are_not_forwarded_either_way_on_either_path() {
    let s = setup(SPEC).await;
    s.ingress.add("app1", "web", "a", backend("a").await);
    // A plain GET takes the lean path; one that names a header in `Connection` goes to hyper
    // (for the rest of its connection, so each is sent on a new one). Neither may pass on what
    // described the client's connection.
    let common = "host: shop.localhost\r\nkeep-alive: timeout=5\r\n\
                  proxy-connection: keep-alive\r\nte: trailers\r\ntrailer: x-sum\r\n\
                  x-kept: yes\r\n";
    let requests = [
        ("lean", format!("GET /h HTTP/1.1\r\n{common}\r\n")),
        (
            "hyper",
            format!("GET /h HTTP/1.1\r\n{common}connection: x-private\r\nx-private: a\r\n\r\n"),
        ),
    ];
    let send = |request: String| {
        let addr = s.addr;
        async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(request.as_bytes()).await.unwrap();
            read_answer(&mut conn).await
        }
    };
    for (path, request) in &requests {
        let (head, body) = send(request.clone()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        let got = header_names(&body);
        assert!(got.contains(&"x-kept".to_string()), "{path}: {body}");
        for h in [
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "x-private",
        ] {
            assert!(
                !got.contains(&h.to_string()),
                "{path} forwarded {h}: {body}"
            );
        }
    }
    s.ingress.eject("a");

    // The same of an instance's answer, on both paths.
    let (raw, _) = raw_backend(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=5\r\ntrailer: x-sum\r\n\
         upgrade: h2c\r\nconnection: x-private\r\nx-private: secret\r\nx-kept: yes\r\n\r\nok",
        Closes::Never,
    )
    .await;
    s.ingress.add("app1", "web", "raw", raw);
    for (path, request) in &requests {
        let (head, body) = send(request.clone()).await;
        assert_eq!(body, "ok", "{path}: {head}");
        let got = header_names(&head);
        assert!(got.contains(&"x-kept".to_string()), "{path}: {head}");
        // The lean path relays the head as sent; hyper writes its own, with a `Date`: which
        // path served is seen here, so that both are tested.
        assert_eq!(
            got.contains(&"date".to_string()),
            *path == "hyper",
            "{path}: {head}"
        );
        for h in ["keep-alive", "trailer", "upgrade", "x-private"] {
            assert!(!got.contains(&h.to_string()), "{path} relayed {h}: {head}");
        }
    }
}
