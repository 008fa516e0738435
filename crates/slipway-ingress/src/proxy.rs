//! The HTTP server that forwards requests to instances.
//!
//! Each client connection keeps its own idle HTTP/1.1 connections to instances, never shared
//! with another client connection: whatever an instance sends, framed right or wrong, reaches
//! only the client connection that asked. A request's own origin-form URI is sent as it came
//! unless a route rewrites the path. A connection goes back to its client connection's pool
//! when the response body it carried has been sent whole; one whose response was cut short
//! is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::framing::HOP_BY_HOP;
use crate::h1::{self, RETRY_BODY_BYTES};
use crate::metrics::{AppMetrics, Source};
use crate::pipe::CONNECT_TIMEOUT;
use crate::rules;
use crate::table::{Backend, InFlight, Ingress, Proxy};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why no connection to a backend could be had: nothing was sent.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connecting took longer than {} s", CONNECT_TIMEOUT.as_secs())]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Handshake(#[from] hyper::Error),
}

/// One client connection's idle connections to instances on this path.
#[derive(Default)]
pub(crate) struct Upstreams(Mutex<Vec<(Weak<Backend>, SendRequest<UpstreamBody>)>>);

impl Upstreams {
    fn pop(&self, backend: &Arc<Backend>) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(b, c)| b.strong_count() > 0 && !c.is_closed());
        let i = idle
            .iter()
            .rposition(|(b, _)| std::ptr::eq(b.as_ptr(), Arc::as_ptr(backend)))?;
        Some(idle.swap_remove(i).1)
    }

    fn push(&self, backend: &Arc<Backend>, conn: SendRequest<UpstreamBody>) {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        idle.push((Arc::downgrade(backend), conn));
    }
}

/// This client connection's idle connection to `backend`, else a new one.
async fn checkout(
    backend: &Arc<Backend>,
    upstreams: &Upstreams,
) -> Result<SendRequest<UpstreamBody>, ConnectError> {
    while let Some(mut conn) = upstreams.pop(backend) {
        if !conn.is_closed() && conn.ready().await.is_ok() {
            return Ok(conn);
        }
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend.addr))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    backend.connected();
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    let id = backend.id.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(instance = %id, error = %e, "backend connection ended with an error");
        }
    });
    Ok(sender)
}

/// How long connections under way may take to finish after `shutdown` fires.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves the ingress on `listener` until `shutdown` fires, then lets the requests under way
/// finish (for at most 30 s) and returns.
///
/// The ingress runs on threads of its own, one per CPU, each with a single-threaded runtime
/// that keeps its own connections to the instances: a request is read, forwarded and
/// answered on one thread, with no hand-off to another. Every thread accepts from the same
/// listener and gives each new connection to the thread with the fewest open ones (itself on
/// a tie): the thread that happens to be awake when a burst of connections comes would
/// otherwise take them all and leave the other CPUs idle.
///
/// No thread accepts before every thread has set up its runtime and its copy of the listener
/// (or given up, closing that copy) and this task has closed the listener it was given: every
/// descriptor the ingress holds for its life is taken, and every one it lets go of at start is
/// let go, before its first connection. A thread that started late would otherwise take its
/// descriptors while the others serve, or fail to when they have run out, and close its copy of
/// the listener under them.
pub async fn serve(ingress: Arc<Ingress>, listener: TcpListener, shutdown: CancellationToken) {
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the ingress cannot take its listener");
            return;
        }
    };
    let scheme = HeaderValue::from_static(if ingress.config.public_scheme == "https" {
        "https"
    } else {
        "http"
    });
    let proxy = Arc::new(Proxy {
        ingress,
        scheme,
        tls: false,
    });
    let count = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
    let (peers, inboxes): (Vec<Peer>, Vec<_>) = (0..count)
        .map(|_| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let peer = Peer {
                inbox: tx,
                open: AtomicUsize::new(0),
            };
            (peer, rx)
        })
        .unzip();
    let peers: Arc<[Peer]> = peers.into();
    let budget = Arc::new(Budget {
        open: AtomicUsize::new(0),
        max: proxy.ingress.config.max_connections,
        ingress: Arc::clone(&proxy.ingress),
    });
    let mut finished = Vec::with_capacity(count);
    let mut ready = Vec::with_capacity(count);
    let (open, gate_open) = tokio::sync::watch::channel(false);
    for (index, inbox) in inboxes.into_iter().enumerate() {
        let own = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the ingress cannot share its listener");
                peers[index].retire();
                continue;
            }
        };
        let (proxy, peers_of_worker, shutdown, budget) = (
            Arc::clone(&proxy),
            Arc::clone(&peers),
            shutdown.clone(),
            Arc::clone(&budget),
        );
        let (done, finish) = tokio::sync::oneshot::channel::<()>();
        let (is_ready, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let gate = Gate {
            ready: is_ready,
            open: gate_open.clone(),
        };
        let started = std::thread::Builder::new()
            .name(format!("slipway-ingress-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "an ingress worker cannot start its runtime");
                        peers_of_worker[index].retire();
                        // Its copy of the listener is closed before `serve` hears of it.
                        drop(own);
                        drop(gate);
                        return;
                    }
                };
                let me = Worker {
                    index,
                    proxy,
                    peers: peers_of_worker,
                    shutdown,
                    budget,
                };
                runtime.block_on(me.run(own, inbox, gate));
                drop(done);
            });
        match started {
            Ok(_) => {
                finished.push(finish);
                ready.push(ready_rx);
            }
            Err(e) => {
                tracing::error!(error = %e, "an ingress worker cannot start");
                peers[index].retire();
            }
        }
    }
    drop(listener);
    for r in ready {
        let _ = r.await;
    }
    let _ = open.send(true);
    for f in finished {
        let _ = f.await;
    }
}

/// What the ingress threads know of each other: where to send a connection, and how many each
/// has open.
struct Peer {
    inbox: tokio::sync::mpsc::UnboundedSender<Handed>,
    open: AtomicUsize,
}

impl Peer {
    /// Marks a thread that could not start as one never to give a connection to.
    fn retire(&self) {
        self.open.store(usize::MAX / 2, Ordering::Relaxed);
    }
}

/// How an ingress thread waits for the others before it accepts.
struct Gate {
    /// Told once the thread is ready to accept; dropped if it cannot start.
    ready: tokio::sync::oneshot::Sender<()>,
    /// True once every thread is ready or has given up.
    open: tokio::sync::watch::Receiver<bool>,
}

impl Gate {
    /// Says this thread is ready, and waits for the others; false if `serve` was dropped
    /// before they were.
    async fn pass(mut self) -> bool {
        let _ = self.ready.send(());
        self.open.wait_for(|open| *open).await.is_ok()
    }
}

/// One ingress thread.
struct Worker {
    index: usize,
    proxy: Arc<Proxy>,
    peers: Arc<[Peer]>,
    shutdown: CancellationToken,
    budget: Arc<Budget>,
}

/// A connection one ingress thread gives another, with its place in the budget.
type Handed = (std::net::TcpStream, SocketAddr, Slot);
type Inbox = tokio::sync::mpsc::UnboundedReceiver<Handed>;

/// The ingress's budget of client connections, shared by its threads.
struct Budget {
    open: AtomicUsize,
    max: usize,
    /// Its counters: the gauge of connections open is the sum over every listener.
    ingress: Arc<Ingress>,
}

/// A client connection's place in the budget, for as long as it lives.
struct Slot(Arc<Budget>);

impl Slot {
    /// A place, unless `max` connections are open.
    fn take(budget: &Arc<Budget>) -> Option<Slot> {
        let taken = budget
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < budget.max).then_some(n + 1)
            });
        taken.ok().map(|_| {
            budget
                .ingress
                .global
                .open_connections
                .fetch_add(1, Ordering::Relaxed);
            Slot(Arc::clone(budget))
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0
            .ingress
            .global
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The longest pause after accepting failed.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

impl Worker {
    /// Accepts connections and takes those other threads give it, from when every thread is
    /// ready until shutdown; then waits for its connections to finish.
    async fn run(self, listener: std::net::TcpListener, mut inbox: Inbox, gate: Gate) {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "an ingress worker cannot listen");
                return;
            }
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.proxy.ingress.config.header_timeout)
            // Used for a connection's last HTTP/1 request (HTTP/1.0, an upgrade, `Connection:
            // close`): any head after it would reach hyper unchecked.
            .keep_alive(false);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        if !gate.pass().await {
            return;
        }
        let connections = tokio_util::task::TaskTracker::new();
        let mut backoff = Duration::ZERO;
        let global = &self.proxy.ingress.global;
        global.accepting.fetch_add(1, Ordering::SeqCst);
        loop {
            let (stream, remote, slot) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        backoff = Duration::ZERO;
                        // Past the budget, the connection is closed at once: it neither waits
                        // in the listener's queue nor holds anything.
                        let Some(slot) = Slot::take(&self.budget) else {
                            tracing::debug!(%remote, max = self.budget.max, "a client connection is over the ingress's budget and is closed");
                            drop(stream);
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        match self.give_away(stream, remote, slot) {
                            Some((stream, slot)) => (stream, remote, slot),
                            None => continue,
                        }
                    }
                    Err(e) => {
                        // Out of descriptors or memory, say: wait a little longer each time
                        // rather than try again at once, and keep accepting afterwards.
                        backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                        tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accepting a connection failed");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = self.shutdown.cancelled() => break,
                        }
                        continue;
                    }
                },
                Some(handed) = inbox.recv() => match self.take(handed) {
                    Some(taken) => taken,
                    None => continue,
                },
                () = self.shutdown.cancelled() => break,
            };
            self.spawn(&connections, &builder, stream, remote, slot);
        }
        global.accepting.fetch_sub(1, Ordering::SeqCst);
        drop(listener);
        // Connections another thread accepted and gave this one before it stopped are served
        // too (their answers say `Connection: close`): dropped, their clients' first requests
        // would fail. No thread can give this one any more once its inbox is closed.
        inbox.close();
        while let Some(handed) = inbox.recv().await {
            if let Some((stream, remote, slot)) = self.take(handed) {
                self.spawn(&connections, &builder, stream, remote, slot);
            }
        }
        connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
            .await
            .is_err()
        {
            tracing::info!(
                connections = connections.len(),
                "connections still open at the end of the ingress's shutdown grace are closed"
            );
        }
    }

    /// A connection another thread gave this one, on this thread's runtime.
    fn take(&self, (stream, remote, slot): Handed) -> Option<(TcpStream, SocketAddr, Slot)> {
        match TcpStream::from_std(stream) {
            Ok(stream) => Some((stream, remote, slot)),
            Err(e) => {
                tracing::warn!(error = %e, "a connection from another ingress thread could not be taken");
                self.peers[self.index].open.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Serves a connection this thread accepted or was given, until it ends.
    fn spawn(
        &self,
        connections: &tokio_util::task::TaskTracker,
        builder: &Arc<auto::Builder<TokioExecutor>>,
        stream: TcpStream,
        remote: SocketAddr,
        slot: Slot,
    ) {
        let open = OpenConnection(Arc::clone(&self.peers), self.index);
        let (proxy, builder, shutdown) = (
            Arc::clone(&self.proxy),
            Arc::clone(builder),
            self.shutdown.clone(),
        );
        connections.spawn(async move {
            let _open = (open, slot);
            serve_connection(proxy, &builder, stream, remote, shutdown).await;
        });
    }

    /// Counts a new connection for the thread with the fewest open, and sends it there when
    /// that is not this one; returns it when it stays here.
    fn give_away(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        slot: Slot,
    ) -> Option<(TcpStream, Slot)> {
        let open: Vec<usize> = self
            .peers
            .iter()
            .map(|p| p.open.load(Ordering::Relaxed))
            .collect();
        let target = least_loaded(&open, self.index);
        self.peers[target].open.fetch_add(1, Ordering::Relaxed);
        if target == self.index {
            return Some((stream, slot));
        }
        let (back, slot) = match stream.into_std() {
            Ok(std) => match self.peers[target].inbox.send((std, remote, slot)) {
                Ok(()) => return None,
                Err(unsent) => {
                    let (std, _, slot) = unsent.0;
                    (TcpStream::from_std(std), slot)
                }
            },
            Err(e) => (Err(e), slot),
        };
        self.peers[target].open.fetch_sub(1, Ordering::Relaxed);
        self.peers[self.index].open.fetch_add(1, Ordering::Relaxed);
        match back {
            Ok(stream) => Some((stream, slot)),
            Err(e) => {
                tracing::warn!(error = %e, "a connection could not be given to another ingress thread");
                self.peers[self.index].open.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The thread with the fewest connections open, `me` among those with as few.
fn least_loaded(open: &[usize], me: usize) -> usize {
    (0..open.len())
        .min_by_key(|&i| (open[i], i != me))
        .unwrap_or(me)
}

/// Counts a connection open on an ingress thread for as long as it lives.
struct OpenConnection(Arc<[Peer]>, usize);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0[self.1].open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one client connection: plain HTTP/1.1 on the lean path, the rest of the connection
/// by hyper from the first request that path leaves to it.
async fn serve_connection(
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    remote: SocketAddr,
    shutdown: CancellationToken,
) {
    let config = &proxy.ingress.config;
    let (write_timeout, header_timeout) = (config.client_write_timeout, config.header_timeout);
    let upstreams = Arc::new(Upstreams::default());
    let (mut stream, mut read) = (stream, BytesMut::new());
    loop {
        let (taken, rest, request) = match h1::serve(&proxy, stream, remote, &shutdown, read).await
        {
            h1::Ended::Closed => return,
            h1::Ended::HandOff(stream, read, request) => (stream, read, request),
        };
        let service = {
            let (proxy, upstreams) = (Arc::clone(&proxy), Arc::clone(&upstreams));
            hyper::service::service_fn(move |req| {
                let (proxy, upstreams) = (Arc::clone(&proxy), Arc::clone(&upstreams));
                async move { Ok::<_, Infallible>(proxy.handle(req, remote, upstreams).await) }
            })
        };
        let io = h1::Rewound {
            read: rest,
            stream: taken,
            write_timeout,
            stalled: None,
        };
        let request = match request {
            Some(r) if !r.last => r,
            // HTTP/2, or the connection's last HTTP/1 request: hyper serves the rest.
            _ => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                tokio::pin!(conn);
                let ended = tokio::select! {
                    r = conn.as_mut() => r,
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, %remote, "client connection ended with an error");
                }
                return;
            }
        };
        // One request: hyper reads to its end and no further, answers it, and gives the
        // connection back for the lean path to check the next head.
        let one = h1::OneRequest::new(io, &request);
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .half_close(true)
            .keep_alive(true)
            .serve_connection(TokioIo::new(one), service)
            .without_shutdown()
            .await;
        let parts = match served {
            Ok(parts) => parts,
            Err(e) => {
                tracing::debug!(error = %e, %remote, "client connection ended with an error");
                return;
            }
        };
        let one = parts.io.into_inner();
        if !one.is_done() || shutdown.is_cancelled() {
            return;
        }
        let mut next = BytesMut::from(&parts.read_buf[..]);
        next.extend_from_slice(&one.inner.read);
        (stream, read) = (one.inner.stream, next);
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Bytes(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

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
    headers.remove(header::TRANSFER_ENCODING);
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

/// `X-Forwarded-For` with `ip` appended.
fn forwarded_for(previous: Option<&HeaderValue>, ip: std::net::IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    let mut buf = Vec::with_capacity(previous.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = previous {
        buf.extend_from_slice(p.as_bytes());
        buf.extend_from_slice(b", ");
    }
    write!(buf, "{ip}").ok()?;
    HeaderValue::from_maybe_shared(Bytes::from(buf)).ok()
}

/// Who answered a request on hyper's path, for its app's counters.
#[derive(Default)]
struct Outcome {
    app: Option<Arc<AppMetrics>>,
    /// The answer is an instance's (else the ingress's own).
    upstream: bool,
}

impl Proxy {
    /// Answers a request hyper read, and counts it for its app as the lean path does: once,
    /// when its answer's head is ready, with who gave it.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        upstreams: Arc<Upstreams>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let mut outcome = Outcome::default();
        let response = self.answer(req, remote, upstreams, &mut outcome).await;
        if let Some(app) = &outcome.app {
            let source = if outcome.upstream {
                Source::Upstream
            } else {
                Source::Ingress
            };
            app.answered(response.status().as_u16(), source, start.elapsed());
        }
        response
    }

    async fn answer(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        upstreams: Arc<Upstreams>,
        outcome: &mut Outcome,
    ) -> Response<ProxyBody> {
        let host = match req.headers().get(header::HOST) {
            Some(h) => h.clone(),
            None => match req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                Some(h) => h,
                None => HeaderValue::from_static(""),
            },
        };
        let routed = self.ingress.route(
            host.to_str().unwrap_or_default(),
            req.uri().path(),
            self.tls,
        );
        let (pool, forwarded_path, cors) = match routed {
            Ok(r) => {
                outcome.app = Some(Arc::clone(&r.app));
                (r.pool, r.path, r.cors)
            }
            Err(refused) => {
                outcome.app = refused.app;
                if let Some(redirect) = &refused.redirect {
                    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                    let location = rules::location(
                        redirect,
                        self.scheme.to_str().unwrap_or("http"),
                        host.to_str().unwrap_or_default(),
                        target,
                    );
                    let mut r = text(refused.status, String::new());
                    match HeaderValue::from_str(&location) {
                        Ok(v) => {
                            r.headers_mut().insert(header::LOCATION, v);
                        }
                        Err(_) => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                "the request's host cannot be redirected\n".into(),
                            );
                        }
                    }
                    return r;
                }
                return text(refused.status, refused.text);
            }
        };
        // The origin the route's CORS policy allows, when the request comes from one.
        let allowed_origin = cors.as_ref().and_then(|c| {
            let origin = req.headers().get(header::ORIGIN)?;
            c.allows(origin.to_str().ok()?).then(|| origin.clone())
        });
        if let (Some(cors), Some(origin)) = (&cors, &allowed_origin)
            && rules::is_preflight(req.method(), req.headers())
        {
            let mut r = Response::new(ProxyBody::Bytes(None));
            cors.preflight(origin, r.headers_mut());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            return r;
        }
        let component = pool.component.as_str();
        // The path to send, when a route changes it.
        let rewritten: Option<PathAndQuery> = match forwarded_path {
            None => None,
            Some(p) => {
                let pq = match req.uri().query() {
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                };
                match PathAndQuery::try_from(pq) {
                    Ok(pq) => Some(pq),
                    Err(_) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "the request path is not valid\n".into(),
                        );
                    }
                }
            }
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
        let mut client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let http::request::Parts {
            method,
            uri,
            mut headers,
            ..
        } = parts;

        strip_hop_by_hop(&mut headers, upgrade);
        if let Some(v) = forwarded_for(headers.get("x-forwarded-for"), remote.ip()) {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert("x-forwarded-proto", self.scheme.clone());
        headers.insert("x-forwarded-host", host.clone());
        headers.insert(header::HOST, host);
        // Origin-form: the path and query alone.
        let uri = match rewritten {
            Some(pq) => Uri::from(pq),
            None => match uri.path_and_query() {
                Some(_) if uri.scheme().is_none() => uri,
                Some(pq) => Uri::from(pq.clone()),
                None => Uri::from_static("/"),
            },
        };

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
        // A request that may go out twice keeps what it needs for the second time.
        let resendable = kept.is_some() && is_idempotent(&method);
        let mut exclude: Option<String> = None;
        let mut spare: Option<Request<UpstreamBody>> = None;
        for attempt in 0..2 {
            let Some(backend) = pool.pick(exclude.as_deref()) else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no instance of {component} is ready\n"),
                );
            };
            let guard = InFlight::new(Arc::clone(&backend));
            let up = match spare.take() {
                Some(up) => up,
                None => {
                    let body = match (&kept, streaming.take()) {
                        (Some(b), _) => UpstreamBody::Bytes(Some(b.clone())),
                        (None, Some(b)) => UpstreamBody::Stream(Limited::new(b, max as usize)),
                        (None, None) => UpstreamBody::Bytes(None),
                    };
                    let mut up = Request::new(body);
                    *up.method_mut() = method.clone();
                    *up.version_mut() = Version::HTTP_11;
                    *up.uri_mut() = uri.clone();
                    *up.headers_mut() = if attempt == 0 && !resendable {
                        std::mem::take(&mut headers)
                    } else {
                        headers.clone()
                    };
                    up
                }
            };
            let mut conn = match checkout(&backend, &upstreams).await {
                Ok(c) => c,
                Err(e) => {
                    crate::probe::connect_failed(&backend);
                    if let Some(app) = &outcome.app {
                        app.connect_error();
                    }
                    if attempt == 0 {
                        tracing::debug!(instance = %backend.id, error = %e, "sending to another instance");
                        exclude = Some(backend.id.clone());
                        spare = Some(up);
                        continue;
                    }
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("{component} could not be reached: {e}\n"),
                    );
                }
            };
            let timeout = self.ingress.config.request_timeout;
            let sent = tokio::time::timeout(timeout, conn.try_send_request(up)).await;
            match sent {
                Err(_) => {
                    return text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "{component} did not answer within {} s\n",
                            timeout.as_secs()
                        ),
                    );
                }
                Ok(Err(mut e)) => {
                    // Not sent at all: the connection closed as it was taken.
                    let unsent = e.take_message();
                    let error = e.into_error();
                    let may_retry = attempt == 0 && (unsent.is_some() || resendable);
                    if may_retry {
                        tracing::debug!(instance = %backend.id, error = %error, "sending again to another instance");
                        exclude = Some(backend.id.clone());
                        spare = unsent;
                        continue;
                    }
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("{component} could not be reached: {}\n", root_cause(&error)),
                    );
                }
                Ok(Ok(mut resp)) => {
                    outcome.upstream = true;
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
                        return Response::from_parts(parts, ProxyBody::Bytes(None));
                    }
                    strip_hop_by_hop(resp.headers_mut(), false);
                    if let (Some(cors), Some(origin)) = (&cors, &allowed_origin) {
                        cors.answer(origin, resp.headers_mut());
                    }
                    return resp.map(|inner| {
                        ProxyBody::Upstream(Upstream {
                            inner,
                            conn: Some(conn),
                            home: upstreams,
                            done: false,
                            guard,
                        })
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

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

/// A request body on its way to a backend: kept whole, or streamed from the client.
pub(crate) enum UpstreamBody {
    Bytes(Option<Bytes>),
    Stream(Limited<Incoming>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Bytes(b) => b.as_ref().is_none_or(Bytes::is_empty),
            UpstreamBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Bytes(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            UpstreamBody::Stream(s) => s.size_hint(),
        }
    }
}

/// What the ingress answers with: its own short text, or a backend's response.
pub(crate) enum ProxyBody {
    Bytes(Option<Bytes>),
    Upstream(Upstream),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(u) => {
                let polled = Pin::new(&mut u.inner).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    u.done = true;
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Bytes(b) => b.as_ref().is_none_or(Bytes::is_empty),
            ProxyBody::Upstream(u) => u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(u) => u.inner.size_hint(),
        }
    }
}

/// A backend's response body. Its request counts as in flight until the body is gone, and its
/// connection goes back to its client connection's pool if the body was read to its end.
pub(crate) struct Upstream {
    inner: Incoming,
    conn: Option<SendRequest<UpstreamBody>>,
    home: Arc<Upstreams>,
    done: bool,
    guard: InFlight,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && (self.done || self.inner.is_end_stream())
            && !conn.is_closed()
        {
            self.home.push(&self.guard.0, conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::least_loaded;

    #[test]
    fn a_new_connection_goes_to_the_thread_with_the_fewest_open() {
        assert_eq!(least_loaded(&[3, 1, 2], 0), 1);
        // On a tie, the thread that accepted it keeps it.
        assert_eq!(least_loaded(&[1, 1, 1], 2), 2);
        assert_eq!(least_loaded(&[2, 1, 1], 0), 1);
        // A burst accepted by one thread is spread: each connection is counted where it goes.
        let mut open = vec![0; 2];
        for _ in 0..32 {
            let target = least_loaded(&open, 0);
            open[target] += 1;
        }
        assert_eq!(open, [16, 16]);
    }
}
