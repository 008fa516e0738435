//! The control socket over a real unix socket: a daemon-side table followed by an ingress
//! that serves real HTTP, drains that wait for the requests the ingress process has under way,
//! the last table kept when the daemon goes, and a handover of the listening socket to a new
//! ingress.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slipway_ingress::control::{self, ControlServer, Hello, Link};
use slipway_ingress::{Ingress, IngressConfig};
use slipway_spec::parse_spec;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A backend answering its name; `/slow` after 1.5 s.
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
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An ingress "process": its table, its HTTP server and its control socket.
struct Process {
    ingress: Arc<Ingress>,
    stop: CancellationToken,
    handed_over: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

async fn start_process(socket: &std::path::Path, listener: TcpListener) -> Process {
    let ingress = Ingress::new(IngressConfig::default());
    let stop = CancellationToken::new();
    let hello = Hello {
        protocol: control::PROTOCOL,
        version: "test".into(),
        pid: std::process::id(),
        listen: listener.local_addr().unwrap(),
        admin: None,
        https: None,
    };
    use std::os::fd::AsFd;
    let handed = vec![listener.as_fd().try_clone_to_owned().unwrap()];
    let control_listener = ControlServer::bind(socket).unwrap();
    let server = Arc::new(ControlServer::new(
        Arc::clone(&ingress),
        hello,
        handed,
        socket.to_path_buf(),
        stop.clone(),
    ));
    let handed_over = server.handed_over();
    tokio::spawn(server.serve(control_listener));
    let served = tokio::spawn(slipway_ingress::serve(
        Arc::clone(&ingress),
        listener,
        stop.clone(),
    ));
    Process {
        ingress,
        stop,
        handed_over,
        served,
    }
}

fn client(addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .resolve("shop.localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(http: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, String) {
    let r = http
        .get(format!("http://shop.localhost:{}{path}", addr.port()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Waits until `what` answers `want`.
async fn until(http: &reqwest::Client, addr: SocketAddr, want: (u16, &str)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(http, addr, "/").await;
        if status == want.0 && body.starts_with(want.1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ingress answered {status} {body:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_process_follows_the_daemons_table_and_keeps_it_when_the_daemon_goes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join(control::SOCKET);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let process = start_process(&socket, listener).await;
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600,
        "only the daemon's user may route traffic"
    );
    let http = client(addr);
    let (blue, green) = (backend("blue").await, backend("green").await);

    // The daemon's table: nothing is sent before it has converged.
    let daemon = Ingress::new(IngressConfig::default());
    let daemon_gone = CancellationToken::new();
    let link = Link::start(Arc::clone(&daemon), socket.clone(), daemon_gone.clone());
    let spec = parse_spec("name: shop\nservices:\n  - name: web\n    image: {registry_type: DOCKER_HUB, repository: x}\n")
        .unwrap()
        .spec;
    daemon.set_app("app-1", &spec);
    daemon.add("app-1", "web", "blue-1", blue);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&http, addr, "/").await.0,
        404,
        "no table before follow()"
    );
    link.follow();
    until(&http, addr, (200, "blue")).await;
    assert_eq!(
        link.hello().borrow().as_ref().map(|h| h.listen),
        Some(addr),
        "the daemon learns where the ingress serves"
    );

    // A drain in the daemon returns only once the ingress process's request to the instance
    // has finished: a slow request to blue, then green joins and blue is drained.
    let sent = Instant::now();
    let slow = {
        let http = http.clone();
        tokio::spawn(async move {
            let (status, body) = get(&http, addr, "/slow").await;
            (status, body, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.add("app-1", "web", "green-1", green);
    let drained = {
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            daemon
                .drain("app-1", "web", "blue-1", Duration::from_secs(20))
                .await;
            Instant::now()
        })
    };
    let (status, body, answered) = slow.await.unwrap();
    assert_eq!(body, "blue");
    let drained = drained.await.unwrap();
    assert_eq!(status, 200);
    // The backend holds the request for 1.5 s.
    assert!(
        drained.duration_since(sent) >= Duration::from_millis(1400),
        "the drain returned after {:?}, before the ingress process's request to the instance finished ({:?})",
        drained.duration_since(sent),
        answered.duration_since(sent)
    );
    for _ in 0..20 {
        assert_eq!(get(&http, addr, "/").await, (200, "green".into()));
    }

    // The daemon goes: the ingress routes with the last table it had.
    daemon_gone.cancel();
    drop(link);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        assert_eq!(get(&http, addr, "/").await, (200, "green".into()));
    }

    // A new daemon: its table (converged) replaces the kept one without a gap.
    let daemon = Ingress::new(IngressConfig::default());
    let link = Link::start(
        Arc::clone(&daemon),
        socket.clone(),
        CancellationToken::new(),
    );
    daemon.set_app("app-1", &spec);
    daemon.add("app-1", "web", "blue-2", blue);
    link.follow();
    // Green leaves by draining; blue-2 takes over.
    until(&http, addr, (200, "blue")).await;
    for _ in 0..20 {
        assert_eq!(get(&http, addr, "/").await, (200, "blue".into()));
    }
    // What a spec asks beyond its services reaches the ingress process too: a domain, a
    // redirect and a CORS policy.
    let spec = parse_spec("name: shop\ndomains: [{domain: shop.example.com}]\nservices:\n  - name: web\n    image: {registry_type: DOCKER_HUB, repository: x}\ningress:\n  rules:\n    - {match: {path: {prefix: /old}}, redirect: {uri: /new, redirect_code: 301}}\n    - {component: {name: web}, cors: {allow_origins: [{exact: \"https://a.example.com\"}]}}\n")
        .unwrap()
        .spec;
    daemon.set_app("app-1", &spec);
    let by_domain = reqwest::Client::builder()
        .resolve("shop.example.com", addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |path: &str| format!("http://shop.example.com:{}{path}", addr.port());
    let deadline = Instant::now() + Duration::from_secs(10);
    while by_domain.get(url("/")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the domain is not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved = by_domain.get(url("/old")).send().await.unwrap();
    assert_eq!(moved.status(), 301);
    assert_eq!(moved.headers()["location"], "https://shop.example.com/new");
    let cors = by_domain
        .get(url("/"))
        .header("origin", "https://a.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        cors.headers()["access-control-allow-origin"],
        "https://a.example.com"
    );
    assert_eq!(cors.text().await.unwrap(), "blue");

    // An app the daemon deletes is forgotten.
    daemon.remove_app("app-1");
    until(&http, addr, (404, "")).await;

    process.stop.cancel();
    let _ = process.served.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ingress_takes_the_listening_socket_and_the_table_over() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join(control::SOCKET);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let old = start_process(&socket, listener).await;
    let http = client(addr);
    let blue = backend("blue").await;
    let spec = parse_spec("name: shop\nservices:\n  - name: web\n    image: {registry_type: DOCKER_HUB, repository: x}\n")
        .unwrap()
        .spec;
    old.ingress.set_app("app-1", &spec);
    old.ingress.add("app-1", "web", "blue-1", blue);
    until(&http, addr, (200, "blue")).await;

    assert!(
        control::take_over(&dir.path().join("nothing.sock"))
            .await
            .unwrap()
            .is_none(),
        "nothing to take over where no ingress answers"
    );
    let taken = control::take_over(&socket).await.unwrap().unwrap();
    assert_eq!(taken.predecessor.listen, addr);
    assert_eq!(taken.listeners.len(), 1);
    use std::os::fd::AsFd;
    let inherited =
        std::net::TcpListener::from(taken.listeners[0].as_fd().try_clone_to_owned().unwrap());
    inherited.set_nonblocking(true).unwrap();
    let inherited = TcpListener::from_std(inherited).unwrap();
    assert_eq!(inherited.local_addr().unwrap(), addr, "the same socket");
    // Before the new one says it took over, the old one serves on.
    assert!(!old.handed_over.is_cancelled());
    let new = start_process(&socket, inherited).await;
    taken.table_into(&new.ingress);
    taken.finish().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), old.handed_over.cancelled())
        .await
        .expect("the old ingress hears that it was replaced");
    tokio::time::timeout(Duration::from_secs(35), old.served)
        .await
        .expect("the old ingress stops serving")
        .unwrap();
    // The new one serves the table it was given, on the same address.
    for _ in 0..20 {
        assert_eq!(get(&http, addr, "/").await, (200, "blue".into()));
    }
    let hello = control::hello(&socket).await.unwrap();
    assert_eq!(hello.listen, addr);
    new.stop.cancel();
    let _ = new.served.await;
}

/// A successor's stand-in on a copy of the listening socket: it answers every request
/// `successor` and closes.
fn successor(listener: std::net::TcpListener) -> tokio::task::JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nsuccessor")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

/// Clients that each open a new connection for every request, as fast as they are answered,
/// until `stop`: the answers' bodies counted, and every failure.
async fn new_connection_load(
    addr: SocketAddr,
    clients: usize,
    stop: CancellationToken,
) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut bodies, mut failures) = (std::collections::BTreeMap::new(), Vec::new());
                while !stop.is_cancelled() {
                    let answer = async {
                        let mut s = tokio::net::TcpStream::connect(addr).await?;
                        s.write_all(
                            b"GET / HTTP/1.1\r\nhost: shop.localhost\r\nconnection: close\r\n\r\n",
                        )
                        .await?;
                        let mut answer = Vec::new();
                        s.read_to_end(&mut answer).await?;
                        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
                    };
                    match tokio::time::timeout(Duration::from_secs(10), answer).await {
                        Ok(Ok(a)) if a.starts_with("HTTP/1.1 200") => {
                            let body = a.rsplit("\r\n\r\n").next().unwrap_or_default().to_string();
                            *bodies.entry(body).or_insert(0) += 1;
                        }
                        Ok(Ok(a)) => failures.push(format!("answered {a:?}")),
                        Ok(Err(e)) => failures.push(e.to_string()),
                        Err(_) => failures.push("no answer within 10 s".into()),
                    }
                }
                (bodies, failures)
            })
        })
        .collect();
    let (mut bodies, mut failures) = (std::collections::BTreeMap::new(), Vec::new());
    for t in tasks {
        let (b, f) = t.await.unwrap();
        for (body, n) in b {
            *bodies.entry(body).or_insert(0) += n;
        }
        failures.extend(f);
    }
    (bodies, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_accepted_as_the_ingress_stops_is_answered_while_a_successor_serves() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    use std::os::fd::AsFd;
    let copy = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned().unwrap());
    let ingress = Ingress::new(IngressConfig::default());
    let spec = parse_spec("name: shop\nservices:\n  - name: web\n    image: {registry_type: DOCKER_HUB, repository: x}\n")
        .unwrap()
        .spec;
    ingress.set_app("app-1", &spec);
    ingress.add("app-1", "web", "old-1", backend("old").await);
    let stop = CancellationToken::new();
    let served = tokio::spawn(slipway_ingress::serve(
        Arc::clone(&ingress),
        listener,
        stop.clone(),
    ));
    let load_stop = CancellationToken::new();
    // A new connection for every request: the ingress's threads accept and give each other
    // connections all the time, up to the moment it stops.
    let load = tokio::spawn(new_connection_load(addr, 32, load_stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let successor = successor(copy);
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(35), served)
        .await
        .expect("the ingress stops")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    load_stop.cancel();
    let (bodies, failures) = load.await.unwrap();
    successor.abort();
    assert!(
        failures.is_empty(),
        "{} requests failed ({bodies:?} answered): {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(bodies.get("old").is_some_and(|&n| n > 0), "{bodies:?}");
    assert!(
        bodies.get("successor").is_some_and(|&n| n > 0),
        "{bodies:?}"
    );
}
