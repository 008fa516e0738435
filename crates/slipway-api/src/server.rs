//! Serving the API's router on a listener, over HTTP or HTTPS, so that clients cannot use up
//! what the daemon shares with the apps it serves (its file descriptors above all: the ingress
//! runs in the same process).
//!
//! Promises:
//! - at most [`ServerConfig::max_connections`] connections are open at once (TLS handshakes
//!   included). The permit is taken *before* `accept`: beyond the cap, new connections are not
//!   accepted and wait in the kernel's listen backlog (where they cost the daemon no file
//!   descriptor) until a connection ends; when the backlog is full too, the kernel drops
//!   their SYNs and clients retry;
//! - a connection's first request must have arrived (TLS handshake and headers) within
//!   [`ServerConfig::header_timeout`] of its accept, over HTTP/1 and HTTP/2: a client that
//!   sends nothing, or a byte now and then, is closed;
//! - on HTTP/1, every later request's headers must arrive within the same time, counted from
//!   the end of the previous answer (hyper's header timer);
//! - a connection (HTTP/1 or HTTP/2) with no request in flight and none begun for
//!   [`ServerConfig::idle_timeout`] is closed (gracefully: HTTP/2 gets a GOAWAY); bytes that
//!   make no request (pings, a trickled preface) do not count. A request in flight — a
//!   followed log, an event stream — is never idle;
//! - on shutdown, no connection is accepted any more; open ones are asked to close once their
//!   requests are answered, and are dropped after [`DRAIN`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long open connections may take to finish once the server stops.
pub const DRAIN: Duration = Duration::from_secs(10);

/// The limits the API server puts on its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The most connections open at once.
    pub max_connections: usize,
    /// The time a connection has, from its accept, to finish its TLS handshake and send its
    /// first request's headers; on HTTP/1, also the time to send a request's headers after
    /// the previous answer.
    pub header_timeout: Duration,
    /// A connection with no request in flight and none begun for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires: over TLS with `tls`, else plain
/// HTTP (HTTP/1.1, and HTTP/2 with prior knowledge).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let router = match tls {
        // Requests say that they came over HTTPS, so that the panel's cookie is `Secure`.
        Some(_) => router.layer(axum::Extension(crate::panel::Https)),
        None => router,
    };
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let mut warned_at: Option<Instant> = None;
    loop {
        while connections.try_join_next().is_some() {}
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    warned_at = Some(Instant::now());
                    tracing::warn!(
                        max_connections = config.max_connections,
                        "the API has as many connections open as it takes (--api-max-connections); new ones wait in the listen backlog"
                    );
                }
                tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (stream, remote) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most often: wait for some to be freed.
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let (router, builder, tls, config, shutdown) = (
            router.clone(),
            Arc::clone(&builder),
            tls.clone(),
            config.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            let _permit = permit;
            connection(stream, remote, router, &builder, tls, &config, &shutdown).await;
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            left = connections.len(),
            "API connections still open after the drain time are closed"
        );
        connections.shutdown().await;
    }
}

/// One connection, from its TLS handshake to its end.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    builder: &auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    config: &ServerConfig,
    shutdown: &CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    match tls {
        Some(acceptor) => {
            match tokio::time::timeout(config.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    serve_connection(tls, remote, router, builder, activity, config, shutdown).await
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        }
        None => serve_connection(stream, remote, router, builder, activity, config, shutdown).await,
    }
}

async fn serve_connection<I>(
    io: I,
    remote: SocketAddr,
    router: Router,
    builder: &auto::Builder<TokioExecutor>,
    activity: Arc<Activity>,
    config: &ServerConfig,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tracked = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = InFlight::enter(&tracked);
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await?;
            // The request stays in flight until its answer's body is sent (or dropped): a
            // long answer (a followed log) is not idle.
            Ok::<_, Infallible>(response.map(move |body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "API connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if draining.is_none() => {
                conn.as_mut().graceful_shutdown();
                draining = Some(Instant::now() + DRAIN);
            }
            _ = check.tick(), if draining.is_none() => {
                if !activity.begun() && activity.age() >= config.header_timeout {
                    // Nothing to finish: a client that never made a request.
                    tracing::debug!(%remote, "no request within the header timeout; closing the API connection");
                    return;
                }
                if activity.idle_for() >= config.idle_timeout {
                    tracing::debug!(%remote, "closing an idle API connection");
                    conn.as_mut().graceful_shutdown();
                    // An idle connection has nothing to finish: a short grace for a GOAWAY.
                    draining = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            () = sleep_until(draining) => {
                tracing::debug!(%remote, "an API connection did not close in time; dropped");
                return;
            }
        }
    }
}

/// How often a connection's clocks are checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// When a connection last began or ended a request, and how many are in flight.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last request's start or end; `u64::MAX` before the
    /// first request.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// How long since the connection was accepted.
    fn age(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether a request has begun on the connection.
    fn begun(&self) -> bool {
        self.last_ms.load(Ordering::Acquire) != u64::MAX
    }

    /// How long the connection has been idle: zero while a request is in flight, else the
    /// time since the last request began or ended (or since the accept).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = match self.last_ms.load(Ordering::Acquire) {
            u64::MAX => Duration::ZERO,
            ms => Duration::from_millis(ms),
        };
        self.start.elapsed().saturating_sub(last)
    }
}

/// A request in flight, for as long as this lives.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
