//! The HTTP server that forwards requests to instances.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::table::{InFlight, Ingress};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// Request bodies up to this size are kept, so that a request that could not be sent can be
/// sent again to another instance.
const RETRY_BODY_BYTES: u64 = 64 * 1024;

struct Proxy {
    ingress: Arc<Ingress>,
    client: Client<HttpConnector, ProxyBody>,
}

/// Serves the ingress on `listener` until `shutdown` fires. Connections under way when it
/// fires are finished by their own tasks.
pub async fn serve(ingress: Arc<Ingress>, listener: TcpListener, shutdown: CancellationToken) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build(connector);
    let header_timeout = ingress.config.header_timeout;
    let proxy = Arc::new(Proxy { ingress, client });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (proxy, builder) = (Arc::clone(&proxy), Arc::clone(&builder));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let proxy = Arc::clone(&proxy);
                async move { Ok::<_, Infallible>(proxy.handle(req, remote).await) }
            });
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, %remote, "client connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Headers that describe one connection, not the request: never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Proxy {
    async fn handle(&self, mut req: Request<Incoming>, remote: SocketAddr) -> Response<ProxyBody> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
            .unwrap_or_default();
        let bare_host = without_port(&host);
        let Some(app) = self.ingress.app_for_host(bare_host) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("no app is served at {bare_host}\n"),
            );
        };
        let path = req.uri().path().to_string();
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let Some((component, forwarded_path)) = app.route(&path) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("app {} has no route for {path}\n", app.name),
            );
        };
        let component = component.to_string();
        let Some(pool) = app.pool(&component) else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no instance of {component} is ready\n"),
            );
        };
        let max = self.ingress.config.max_body_bytes;
        let length: Option<u64> = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if length.is_some_and(|l| l > max) {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the {max} bytes accepted\n"),
            );
        }
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();

        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers, upgrade);
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", remote.ip()),
            None => remote.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if self.ingress.config.public_scheme == "https" {
                "https"
            } else {
                "http"
            }),
        );
        if let Ok(v) = HeaderValue::from_str(&host) {
            headers.insert("x-forwarded-host", v.clone());
            headers.insert(header::HOST, v);
        }

        // Keep small bodies so that the request can be sent again.
        let (kept, mut streaming): (Option<Bytes>, Option<Incoming>) = if body.is_end_stream() {
            (Some(Bytes::new()), None)
        } else if length.is_some_and(|l| l <= RETRY_BODY_BYTES) {
            match Limited::new(body, RETRY_BODY_BYTES as usize)
                .collect()
                .await
            {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body failed: {e}\n"),
                    );
                }
            }
        } else {
            (None, Some(body))
        };
        let retryable = kept.is_some();
        let mut client_upgrade = client_upgrade;
        let mut exclude: Option<String> = None;
        for attempt in 0..2 {
            let Some(backend) = pool.pick(exclude.as_deref()) else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no instance of {component} is ready\n"),
                );
            };
            let guard = InFlight::new(Arc::clone(&backend));
            let body: ProxyBody = match (&kept, streaming.take()) {
                (Some(b), _) => Full::new(b.clone()).map_err(|e| match e {}).boxed(),
                (None, Some(b)) => Limited::new(b, max as usize).boxed(),
                (None, None) => Empty::new().map_err(|e| match e {}).boxed(),
            };
            let uri = format!("http://{}{forwarded_path}{query}", backend.addr);
            let mut up = Request::new(body);
            *up.method_mut() = parts.method.clone();
            *up.version_mut() = Version::HTTP_11;
            *up.headers_mut() = headers.clone();
            match uri.parse() {
                Ok(u) => *up.uri_mut() = u,
                Err(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "the request path is not valid\n".into(),
                    );
                }
            }
            let sent =
                tokio::time::timeout(self.ingress.config.request_timeout, self.client.request(up))
                    .await;
            match sent {
                Err(_) => {
                    return text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "{component} did not answer within {} s\n",
                            self.ingress.config.request_timeout.as_secs()
                        ),
                    );
                }
                Ok(Err(e)) => {
                    let not_sent = e.is_connect();
                    if not_sent {
                        backend.mark_down();
                    }
                    let may_retry = retryable && (not_sent || is_idempotent(&parts.method));
                    if attempt == 0 && may_retry {
                        tracing::debug!(instance = %backend.id, error = %e, "sending again to another instance");
                        exclude = Some(backend.id.clone());
                        continue;
                    }
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("{component} could not be reached: {}\n", root_cause(&e)),
                    );
                }
                Ok(Ok(mut resp)) => {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(client_side) = client_upgrade.take()
                    {
                        let upstream_side = hyper::upgrade::on(&mut resp);
                        tokio::spawn(async move {
                            let _guard = guard;
                            let (Ok(c), Ok(u)) = tokio::join!(client_side, upstream_side) else {
                                return;
                            };
                            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                        });
                        let (parts, _) = resp.into_parts();
                        return Response::from_parts(
                            parts,
                            Empty::new().map_err(|e| match e {}).boxed(),
                        );
                    }
                    strip_hop_by_hop(resp.headers_mut(), false);
                    return resp.map(|b| {
                        Tracked {
                            inner: b,
                            _guard: guard,
                        }
                        .map_err(|e| Box::new(e) as BoxError)
                        .boxed()
                    });
                }
            }
        }
        text(
            StatusCode::BAD_GATEWAY,
            format!("no instance of {component} could be reached\n"),
        )
    }
}

/// `host` without its `:port` (IPv6 literals keep their brackets).
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

/// A response body that keeps its request counted in flight until it has been sent.
struct Tracked {
    inner: Incoming,
    _guard: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
