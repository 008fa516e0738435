//! What a spec asks of its traffic beyond picking a service, over real HTTP: domains (exact
//! and wildcard), rules for one host, redirects, CORS, and the services' older `routes`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slipway_ingress::IngressConfig;
use slipway_spec::parse_spec;
use tokio::net::TcpListener;

mod common;

/// A backend that answers `<name> <path and query>`, with `x-from: <name>` and its own
/// `vary: Accept-Encoding`.
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
                    let r = Response::builder()
                        .header("x-from", name)
                        .header("vary", "Accept-Encoding")
                        .body(Full::new(Bytes::from(format!(
                            "{name} {} {}",
                            req.method(),
                            req.uri()
                        ))))
                        .unwrap();
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Clients for HTTP/1.1 (the ingress's lean path and hyper's) and HTTP/2, which follow no
/// redirect and send every host to the ingress.
fn clients(addr: SocketAddr) -> Vec<(&'static str, reqwest::Client)> {
    let hosts = [
        "shop.localhost",
        "blog.localhost",
        "shop.example.com",
        "example.org",
        "a.b.example.org",
        "old.example.com",
        "nope.example.com",
    ];
    let build = |h2: bool| {
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        for h in hosts {
            b = b.resolve(h, addr);
        }
        if h2 {
            b = b.http2_prior_knowledge();
        }
        b.build().unwrap()
    };
    vec![("HTTP/1.1", build(false)), ("HTTP/2", build(true))]
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn send(
    http: &reqwest::Client,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
) -> Answer {
    let mut r = http.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    Answer {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    }
}

const SPEC: &str = r#"
name: shop
domains:
  - {domain: shop.example.com, type: PRIMARY}
  - {domain: example.org, type: ALIAS, wildcard: true}
  - {domain: old.example.com, type: ALIAS}
services:
  - {name: web, image: {repository: a}}
  - {name: api, image: {repository: a}}
ingress:
  rules:
    - match: {path: {prefix: /api}}
      component: {name: api, rewrite: /v1}
      cors:
        allow_origins: [{exact: "https://shop.example.com"}, {regex: "https://[a-z]+\\.example\\.org"}]
        allow_methods: [GET, POST, DELETE]
        allow_headers: [Content-Type, X-Request-Id]
        expose_headers: [X-From]
        max_age: 1h30m
        allow_credentials: true
    - match: {path: {prefix: /}, authority: {exact: old.example.com}}
      redirect: {authority: shop.example.com, redirect_code: 301}
    - match: {path: {prefix: /moved}}
      redirect: {uri: /here?from=moved, scheme: http, redirect_code: 308}
    - match: {path: {prefix: /admin}, authority: {exact: a.b.example.org}}
      component: {name: api, preserve_path_prefix: true}
    - match: {path: {prefix: /}}
      component: {name: web}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_rules_redirects_and_cors_are_applied_on_every_path() {
    let (ingress, addr, _stop) = common::serve(IngressConfig::default(), SPEC).await;
    ingress.add("app1", "web", "web-1", backend("web").await);
    ingress.add("app1", "api", "api-1", backend("api").await);
    let port = addr.port();
    for (version, http) in clients(addr) {
        let get =
            |host: &str, path: &str| send(&http, "GET", format!("http://{host}:{port}{path}"), &[]);
        // Every host of the app, and only those.
        for host in [
            "shop.localhost",
            "shop.example.com",
            "example.org",
            "a.b.example.org",
        ] {
            let a = get(host, "/x?y=1").await;
            assert_eq!(
                (a.status, a.body.as_str()),
                (200, "web GET /x?y=1"),
                "{version} {host}"
            );
        }
        let a = get("nope.example.com", "/").await;
        assert_eq!(a.status, 404, "{version}");
        // A rule for one host; the same path elsewhere goes to the rule for all.
        let a = get("a.b.example.org", "/admin/users").await;
        assert_eq!(a.body, "api GET /admin/users", "{version}");
        let a = get("example.org", "/admin/users").await;
        assert_eq!(a.body, "web GET /admin/users", "{version}");
        // A rewrite.
        let a = get("shop.example.com", "/api/orders?page=2").await;
        assert_eq!(a.body, "api GET /v1/orders?page=2", "{version}");

        // Redirects: a whole host, and one path with its own URI.
        let a = get("old.example.com", "/cart?item=3").await;
        assert_eq!(a.status, 301, "{version}");
        assert_eq!(
            a.headers["location"], "https://shop.example.com/cart?item=3",
            "{version}"
        );
        let a = get("shop.example.com", "/moved/deep").await;
        assert_eq!(a.status, 308, "{version}");
        assert_eq!(
            a.headers["location"],
            format!("http://shop.example.com:{port}/here?from=moved"),
            "{version}: the same scheme and host keep the port"
        );

        // CORS: a preflight from an allowed origin is answered by the ingress.
        let url = format!("http://shop.example.com:{port}/api/orders");
        let a = send(
            &http,
            "OPTIONS",
            url.clone(),
            &[
                ("origin", "https://docs.example.org"),
                ("access-control-request-method", "DELETE"),
            ],
        )
        .await;
        assert_eq!(a.status, 200, "{version}");
        assert_eq!(a.body, "", "{version}: not the app's answer");
        let h = &a.headers;
        assert_eq!(h["access-control-allow-origin"], "https://docs.example.org");
        assert_eq!(h["access-control-allow-methods"], "GET, POST, DELETE");
        assert_eq!(
            h["access-control-allow-headers"],
            "Content-Type, X-Request-Id"
        );
        assert_eq!(h["access-control-max-age"], "5400");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["vary"], "Origin");
        assert!(!h.contains_key("access-control-expose-headers"));
        // A request from an allowed origin: the app's answer, with the headers.
        let a = send(
            &http,
            "GET",
            url.clone(),
            &[("origin", "https://shop.example.com")],
        )
        .await;
        assert_eq!(a.body, "api GET /v1/orders", "{version}");
        let h = &a.headers;
        assert_eq!(h["access-control-allow-origin"], "https://shop.example.com");
        assert_eq!(h["access-control-expose-headers"], "X-From");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"], "{version}");
        assert!(!h.contains_key("access-control-allow-methods"));
        // From an origin it does not allow (a regex matches the whole origin), and from no
        // origin: the request reaches the app, and no CORS header is added.
        for origin in [
            Some("https://docs.example.org.evil.net"),
            Some("http://shop.example.com"),
            None,
        ] {
            let mut headers = vec![("access-control-request-method", "DELETE")];
            if let Some(o) = origin {
                headers.push(("origin", o));
            }
            let a = send(&http, "OPTIONS", url.clone(), &headers).await;
            assert_eq!(a.body, "api OPTIONS /v1/orders", "{version} {origin:?}");
            assert!(
                !a.headers.contains_key("access-control-allow-origin"),
                "{version} {origin:?}"
            );
        }
        // A route without a policy adds nothing.
        let a = send(
            &http,
            "GET",
            format!("http://shop.example.com:{port}/"),
            &[("origin", "https://shop.example.com")],
        )
        .await;
        assert_eq!(a.body, "web GET /");
        assert!(!a.headers.contains_key("access-control-allow-origin"));
    }

    // A new spec without a domain: that host is not served any more; the others are.
    let spec = SPEC.replace(
        "  - {domain: example.org, type: ALIAS, wildcard: true}\n",
        "",
    );
    ingress.set_app("app1", &parse_spec(&spec).unwrap().spec);
    let (_, http) = &clients(addr)[0];
    for (host, status) in [
        ("example.org", 404),
        ("a.b.example.org", 404),
        ("shop.example.com", 200),
    ] {
        let a = send(http, "GET", format!("http://{host}:{port}/"), &[]).await;
        assert_eq!(a.status, status, "{host}");
    }
    // Another app at its own domain.
    ingress.set_app(
        "app2",
        &parse_spec("name: blog\ndomains: [{domain: example.org}]\nservices:\n  - name: web\n    image: {repository: a}\n    routes: [{path: /posts, preserve_path_prefix: true}]\n    cors: {allow_origins: [{prefix: \"https://\"}]}\n").unwrap().spec,
    );
    ingress.add("app2", "web", "blog-1", backend("blog").await);
    let a = send(
        http,
        "GET",
        format!("http://example.org:{port}/posts/1"),
        &[("origin", "https://x.example.net")],
    )
    .await;
    assert_eq!(a.body, "blog GET /posts/1");
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://x.example.net"
    );
    let a = send(http, "GET", format!("http://example.org:{port}/"), &[]).await;
    assert_eq!(a.status, 404, "the blog routes /posts only");
    // Removing an app frees its domains, and leaves the other app's.
    ingress.remove_app("app2");
    let a = send(
        http,
        "GET",
        format!("http://example.org:{port}/posts/1"),
        &[],
    )
    .await;
    assert_eq!(a.status, 404);
    let a = send(http, "GET", format!("http://shop.example.com:{port}/"), &[]).await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_plain_requests_redirects_and_preflights_in_turn() {
    use tokio::io::AsyncWriteExt;
    let (ingress, addr, _stop) = common::serve(IngressConfig::default(), SPEC).await;
    ingress.add("app1", "web", "web-1", backend("web").await);
    ingress.add("app1", "api", "api-1", backend("api").await);
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let requests = [
        (
            "GET /a HTTP/1.1\r\nhost: shop.example.com\r\n\r\n",
            "200",
            "web GET /a",
        ),
        (
            "GET /moved HTTP/1.1\r\nhost: shop.example.com\r\n\r\n",
            "308",
            "",
        ),
        (
            "OPTIONS /api/x HTTP/1.1\r\nhost: shop.example.com\r\norigin: https://shop.example.com\r\naccess-control-request-method: POST\r\n\r\n",
            "200",
            "",
        ),
        (
            "GET /b HTTP/1.1\r\nhost: shop.example.com\r\n\r\n",
            "200",
            "web GET /b",
        ),
    ];
    for (request, status, body) in requests {
        conn.write_all(request.as_bytes()).await.unwrap();
        let (head, got) = common::read_answer(&mut conn).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request}: {head}"
        );
        assert_eq!(got, body, "{request}");
        if status == "308" {
            assert!(
                head.to_ascii_lowercase()
                    .contains("location: http://shop.example.com/here?from=moved\r\n"),
                "{head}"
            );
        }
    }
}
