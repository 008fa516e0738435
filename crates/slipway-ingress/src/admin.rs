//! The ingress's admin server: its health and its metrics, on a listener of their own (never
//! the one apps are served on, where any host could read them).
//!
//! - `GET /healthz`: `200` and `ok: ...` while the ingress accepts client connections, with
//!   how many apps and instances it routes; `503` otherwise.
//! - `GET /metrics`: [`Ingress::metrics_text`], as `text/plain; version=0.0.4`.
//!
//! It is small on purpose: HTTP/1.1 only, at most [`MAX_CONNECTIONS`] connections at once,
//! each given [`HEADER_TIMEOUT`] to send its request's head.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::table::Ingress;

/// The most admin connections open at once; more wait in the listener's queue.
pub const MAX_CONNECTIONS: usize = 32;
/// How long an admin connection may take to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the ingress's `/healthz` and `/metrics` on `listener` until `shutdown` fires.
pub async fn serve_admin(
    ingress: Arc<Ingress>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let acquired = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p,
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = acquired else { break };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "the ingress's admin server could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let (ingress, shutdown) = (Arc::clone(&ingress), shutdown.clone());
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let ingress = Arc::clone(&ingress);
                async move { Ok::<_, Infallible>(answer(&ingress, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %remote, "an admin connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn answer(ingress: &Ingress, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => {
            let h = ingress.health();
            let counts = format!(
                "{} apps, {} backends in rotation, {} out of rotation",
                h.apps, h.in_rotation, h.out_of_rotation
            );
            if h.accepting {
                plain(StatusCode::OK, format!("ok: {counts}\n"))
            } else {
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the ingress is not accepting connections: {counts}\n"),
                )
            }
        }
        "/metrics" => {
            let mut r = plain(StatusCode::OK, ingress.metrics_text());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "the ingress's admin server serves /healthz and /metrics\n".into(),
        ),
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
