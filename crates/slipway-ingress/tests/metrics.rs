//! The ingress's own health and metrics over real HTTP, and instances that refuse connections
//! leaving rotation until a probe connects again; backends run in the test.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use slipway_ingress::{Ingress, IngressConfig};
use slipway_spec::parse_spec;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

mod common;

/// A backend answering `500` to `/fail` and `200` to anything else, with its name as the
/// body; it counts the connections it accepts. Aborting its task closes its listener and
/// every connection it accepted.
struct Backend {
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

fn start_backend(name: &'static str, listener: TcpListener) -> Backend {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| async move {
                    let status = if req.uri().path() == "/fail" {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    };
                    let mut r = Response::new(Full::new(Bytes::from(name)));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend { accepted, task }
}

async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A port nothing listens on.
async fn refusing_port() -> SocketAddr {
    loopback().await.local_addr().unwrap()
}

/// Which client: HTTP/1.1 takes the lean path, HTTP/2 (prior knowledge) hyper's.
#[derive(Clone, Copy, Debug)]
enum Path {
    Lean,
    Hyper,
}

fn client(path: Path, ingress: SocketAddr) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .resolve("shop.localhost", ingress)
        .resolve("down.localhost", ingress)
        .resolve("nobody.localhost", ingress);
    match path {
        Path::Lean => b.http1_only(),
        Path::Hyper => b.http2_prior_knowledge(),
    }
    .build()
    .unwrap()
}

async fn get(http: &reqwest::Client, path: Path, url: String) -> (u16, String) {
    let r = http.get(url).send().await.unwrap();
    let expected = match path {
        Path::Lean => reqwest::Version::HTTP_11,
        Path::Hyper => reqwest::Version::HTTP_2,
    };
    assert_eq!(r.version(), expected);
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The samples of a Prometheus text, by metric name and labels; panics on any line that
/// breaks the text format (version 0.0.4), on a sample whose family has no `# TYPE` before
/// it, and on a family described twice.
type Samples = HashMap<(String, BTreeMap<String, String>), f64>;

fn parse_prometheus(text: &str) -> Samples {
    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    assert!(text.ends_with('\n'), "the text ends with a line feed");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: Vec<String> = Vec::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a name and a text");
            assert!(is_name(name, true), "{line}");
            assert!(!help.is_empty(), "{line}");
            assert!(!helps.contains(&name.to_string()), "HELP twice: {line}");
            helps.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a type");
            assert!(is_name(name, true), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "no other comment is written: {line}"
        );
        assert!(!line.is_empty(), "no empty line");
        // name{labels} value
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let name = &line[..name_end];
        assert!(is_name(name, true), "{line}");
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let end = loop {
                // A label name, `="`, an escaped value, `"`, then `,` or `}`.
                let start = chars.peek().expect("labels close").0;
                let mut eq = None;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        eq = Some(i);
                        break;
                    }
                }
                let eq = eq.expect("a label has a value");
                let label = &inner[start..eq];
                assert!(is_name(label, false), "label name {label:?}: {line}");
                assert_eq!(chars.next().map(|c| c.1), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("a label value is closed").1 {
                        '\\' => match chars.next().expect("an escape is whole").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("unknown escape \\{c}: {line}"),
                        },
                        '"' => break,
                        '\n' => panic!("a raw line feed in a label value"),
                        c => value.push(c),
                    }
                }
                assert!(
                    labels.insert(label.to_string(), value).is_none(),
                    "label twice: {line}"
                );
                match chars.next().expect("labels close") {
                    (_, ',') => continue,
                    (i, '}') => break i,
                    (_, c) => panic!("{c:?} after a label value: {line}"),
                }
            };
            rest = &inner[end + 1..];
        }
        let value = rest.strip_prefix(' ').expect("one space before the value");
        assert!(!value.contains(' '), "no timestamp is written: {line}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("no TYPE before {line}"));
        assert!(helps.contains(&family.to_string()), "no HELP for {line}");
        if kind == "histogram" {
            assert!(name != family, "a histogram's samples are suffixed: {line}");
            assert_eq!(
                name.ends_with("_bucket"),
                labels.contains_key("le"),
                "le on buckets only: {line}"
            );
        }
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "a sample twice: {line}"
        );
    }
    samples
}

fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

const SHOP: &str = "name: shop\nservices:\n  - {name: web, image: {repository: a}}\n";
const DOWN: &str = "name: down\nservices:\n  - {name: web, image: {repository: a}}\n";

/// An ingress serving `shop` (as `app1`) and `down` (as `app2`) with its admin server.
async fn ingress_with_admin() -> (
    Arc<Ingress>,
    SocketAddr,
    SocketAddr,
    tokio_util::sync::DropGuard,
    tokio_util::sync::DropGuard,
) {
    let (ingress, addr, stop) = common::serve(IngressConfig::default(), SHOP).await;
    ingress.set_app("app2", &parse_spec(DOWN).unwrap().spec);
    let admin = loopback().await;
    let admin_addr = admin.local_addr().unwrap();
    let admin_stop = CancellationToken::new();
    tokio::spawn(slipway_ingress::serve_admin(
        Arc::clone(&ingress),
        admin,
        admin_stop.clone(),
    ));
    (ingress, addr, admin_addr, stop, admin_stop.drop_guard())
}

async fn counts_requests_by_app_status_and_source(path: Path) {
    let (ingress, addr, admin, _stop, _admin_stop) = ingress_with_admin().await;
    let web_listener = loopback().await;
    let web_addr = web_listener.local_addr().unwrap();
    let _web = start_backend("web", web_listener);
    ingress.add("app1", "web", "w1", web_addr);
    ingress.add("app2", "web", "d1", refusing_port().await);

    let http = client(path, addr);
    let port = addr.port();
    for i in 0..10 {
        let p = if i % 3 == 0 { "/fail" } else { "/ok" };
        let (status, body) = get(&http, path, format!("http://shop.localhost:{port}{p}")).await;
        assert_eq!(
            (status, body.as_str()),
            (if i % 3 == 0 { 500 } else { 200 }, "web")
        );
    }
    // Its only instance refuses: the ingress answers itself.
    let (status, _) = get(&http, path, format!("http://down.localhost:{port}/")).await;
    assert_eq!(status, 503, "{path:?}");
    let (status, _) = get(&http, path, format!("http://nobody.localhost:{port}/")).await;
    assert_eq!(status, 404);

    let scraper = reqwest::Client::new();
    let r = scraper
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    let s = parse_prometheus(&text);
    let shop = [("app", "shop"), ("app_id", "app1")];
    let down = [("app", "down"), ("app_id", "app2")];
    let with = |base: &[(&'static str, &'static str)], extra: (&'static str, &'static str)| {
        let mut l = base.to_vec();
        l.push(extra);
        l
    };
    let requests = "slipway_ingress_requests_total";
    let fives = "slipway_ingress_responses_5xx_total";
    let errors = "slipway_ingress_upstream_connect_errors_total";
    let histogram = "slipway_ingress_request_duration_seconds";
    // 10 requests to shop: 4 answered 500 by its instance, 6 answered 200.
    assert_eq!(
        sample(&s, requests, &with(&shop, ("code", "2xx"))),
        6.0,
        "{text}"
    );
    assert_eq!(sample(&s, requests, &with(&shop, ("code", "5xx"))), 4.0);
    assert_eq!(sample(&s, requests, &with(&shop, ("code", "4xx"))), 0.0);
    assert_eq!(sample(&s, fives, &with(&shop, ("source", "upstream"))), 4.0);
    assert_eq!(sample(&s, fives, &with(&shop, ("source", "ingress"))), 0.0);
    assert_eq!(sample(&s, errors, &shop), 0.0);
    assert_eq!(sample(&s, &format!("{histogram}_count"), &shop), 10.0);
    assert_eq!(
        sample(
            &s,
            &format!("{histogram}_bucket"),
            &with(&shop, ("le", "+Inf"))
        ),
        10.0
    );
    let sum = sample(&s, &format!("{histogram}_sum"), &shop);
    assert!(sum > 0.0 && sum < 10.0, "{sum}");
    // Buckets are cumulative, from 1 ms to 10 s.
    let mut last = 0.0;
    for le in slipway_ingress::LATENCY_BUCKETS {
        let n = sample(
            &s,
            &format!("{histogram}_bucket"),
            &with(&shop, ("le", Box::leak(le.to_string().into_boxed_str()))),
        );
        assert!(n >= last, "le={le}: {n} < {last}");
        last = n;
    }
    assert_eq!(last, 10.0, "every request took less than 10 s");
    // 1 request to down: no connection could be made, the ingress answered 503.
    assert_eq!(sample(&s, requests, &with(&down, ("code", "5xx"))), 1.0);
    assert_eq!(sample(&s, requests, &with(&down, ("code", "2xx"))), 0.0);
    assert_eq!(sample(&s, fives, &with(&down, ("source", "ingress"))), 1.0);
    assert_eq!(sample(&s, fives, &with(&down, ("source", "upstream"))), 0.0);
    assert_eq!(sample(&s, errors, &down), 1.0);
    assert_eq!(sample(&s, &format!("{histogram}_count"), &down), 1.0);
    assert_eq!(
        sample(&s, "slipway_ingress_unknown_host_requests_total", &[]),
        1.0
    );
    assert_eq!(sample(&s, "slipway_ingress_routed_apps", &[]), 2.0);
    assert_eq!(sample(&s, "slipway_ingress_routed_backends", &[]), 1.0);
    assert_eq!(
        sample(&s, "slipway_ingress_backends_out_of_rotation", &[]),
        1.0
    );
    // The client's connection is still open.
    assert!(sample(&s, "slipway_ingress_open_connections", &[]) >= 1.0);

    let r = scraper
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "ok: 2 apps, 1 backends in rotation, 1 out of rotation\n"
    );
    let r = scraper
        .get(format!("http://{admin}/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let mut raw = tokio::net::TcpStream::connect(admin).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"POST /metrics HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = common::read_answer(&mut raw).await;
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");

    // An app removed takes its counters with it.
    ingress.remove_app("app2");
    let text = scraper
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_prometheus(&text);
    assert!(!text.contains("app=\"down\""), "{text}");
    assert!(text.contains("app=\"shop\""), "{text}");
}

#[tokio::test]
async fn metrics_count_every_request_on_the_lean_path() {
    counts_requests_by_app_status_and_source(Path::Lean).await;
}

#[tokio::test]
async fn metrics_count_every_request_on_hypers_path() {
    counts_requests_by_app_status_and_source(Path::Hyper).await;
}

#[tokio::test]
async fn healthz_is_503_unless_the_ingress_accepts() {
    let ingress = Ingress::new(IngressConfig::default());
    let admin = loopback().await;
    let admin_addr = admin.local_addr().unwrap();
    let admin_stop = CancellationToken::new();
    let _admin_stop = admin_stop.clone().drop_guard();
    tokio::spawn(slipway_ingress::serve_admin(
        Arc::clone(&ingress),
        admin,
        admin_stop,
    ));
    let healthz = || async {
        let r = reqwest::get(format!("http://{admin_addr}/healthz"))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(healthz().await.0, 503, "not serving yet");

    let listener = loopback().await;
    let stop = CancellationToken::new();
    let served = tokio::spawn(slipway_ingress::serve(
        Arc::clone(&ingress),
        listener,
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while healthz().await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the ingress never said it accepts"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        healthz().await,
        (
            200,
            "ok: 0 apps, 0 backends in rotation, 0 out of rotation\n".into()
        )
    );
    stop.cancel();
    served.await.unwrap();
    assert_eq!(healthz().await.0, 503, "stopped");
}

/// Two instances; one is killed: no request fails, and after the first failure no request
/// tries to connect to it again; the background probe puts it back once it listens again.
async fn a_refusing_instance_leaves_rotation_until_a_probe_connects(path: Path) {
    let (ingress, addr, stop) = common::serve(IngressConfig::default(), SHOP).await;
    let _stop = stop;
    let live_listener = loopback().await;
    let live_addr = live_listener.local_addr().unwrap();
    let _live = start_backend("live", live_listener);
    let flaky_listener = loopback().await;
    let flaky_addr = flaky_listener.local_addr().unwrap();
    let flaky = start_backend("flaky", flaky_listener);
    ingress.add("app1", "web", "live", live_addr);
    ingress.add("app1", "web", "flaky", flaky_addr);
    let http = client(path, addr);
    let url = format!("http://shop.localhost:{}/", addr.port());
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let (status, body) = get(&http, path, url.clone()).await;
        assert_eq!(status, 200);
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both instances take requests: {seen:?}");
    let connect_errors = |ingress: &Ingress| {
        let s = parse_prometheus(&ingress.metrics_text());
        sample(
            &s,
            "slipway_ingress_upstream_connect_errors_total",
            &[("app", "shop"), ("app_id", "app1")],
        )
    };
    assert_eq!(connect_errors(&ingress), 0.0);

    // Killed: its listener and its connections close.
    flaky.task.abort();
    let _ = flaky.task.await;
    // Longer than the 2 s an instance used to stay out after a failure.
    let started = Instant::now();
    for i in 0..200 {
        let (status, body) = get(&http, path, url.clone()).await;
        assert_eq!((status, body.as_str()), (200, "live"), "request {i}");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(3));
    assert_eq!(
        connect_errors(&ingress),
        1.0,
        "only the first request tried the instance that refuses"
    );
    let h = ingress.health();
    assert_eq!((h.in_rotation, h.out_of_rotation), (1, 1));

    // Back on the same port: the probe finds it within its longest interval.
    let back = start_backend("flaky", TcpListener::bind(flaky_addr).await.unwrap());
    let restarted = Instant::now();
    let rejoined = loop {
        let (status, body) = get(&http, path, url.clone()).await;
        assert_eq!(status, 200);
        if body == "flaky" {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(8),
            "the instance never rejoined"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(rejoined <= Duration::from_secs(6), "{rejoined:?}");
    assert!(back.accepted.load(Ordering::SeqCst) >= 1);
    let mut flaky_answers = 0;
    for _ in 0..20 {
        let (status, body) = get(&http, path, url.clone()).await;
        assert_eq!(status, 200);
        flaky_answers += usize::from(body == "flaky");
    }
    assert!(
        flaky_answers >= 5,
        "it takes its share again: {flaky_answers}"
    );
    assert_eq!(connect_errors(&ingress), 1.0);
    let h = ingress.health();
    assert_eq!((h.in_rotation, h.out_of_rotation), (2, 0));
}

#[tokio::test]
async fn a_refusing_instance_leaves_rotation_on_the_lean_path() {
    a_refusing_instance_leaves_rotation_until_a_probe_connects(Path::Lean).await;
}

#[tokio::test]
async fn a_refusing_instance_leaves_rotation_on_hypers_path() {
    a_refusing_instance_leaves_rotation_until_a_probe_connects(Path::Hyper).await;
}
