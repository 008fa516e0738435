//! A closed-loop HTTP load generator: `connections` clients, each on its own kept-alive
//! HTTP/1.1 connection (or a new one for every request), over plain TCP or TLS, sending
//! `GET <path>` one after another and recording every request's latency and outcome.
//!
//! It runs on a runtime of its own (its own threads), so that it does not share a scheduler
//! with the proxy it measures. Requests that begin during the first `warm_up` (while the
//! connections are made) are sent but not recorded. Every load is bounded twice: it stops at
//! `warm_up + max_duration` and after `max_requests` requests, whichever comes first, or
//! earlier when told to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::stats::percentile;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How many distinct failure messages are kept as examples.
const KEPT_ERRORS: usize = 5;

/// Where the load goes: an address on this machine and the `Host` header to send, over TLS
/// when `tls` is set.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub tls: Option<Tls>,
}

/// How a client speaks TLS: its settings (which hold its session cache, shared by every
/// connection of the load) and the server name it asks for.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl Target {
    /// A target on 127.0.0.1 only: the load never leaves the machine.
    pub fn local(port: u16, host: &str) -> Target {
        Target::at(SocketAddr::from(([127, 0, 0, 1], port)), host)
    }

    /// `GET /` at `addr` with `host` as its `Host`.
    pub fn at(addr: SocketAddr, host: &str) -> Target {
        Target {
            addr,
            host: host.to_string(),
            path: "/".into(),
            tls: None,
        }
    }

    /// The same target over TLS.
    pub fn over(mut self, tls: Tls) -> Target {
        self.tls = Some(tls);
        self
    }
}

/// One load: where, how many connections, its unrecorded start and its bounds.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: Target,
    pub connections: usize,
    pub warm_up: Duration,
    /// How long it runs after its warm-up, at the most.
    pub max_duration: Duration,
    pub max_requests: u64,
    /// Each connection's requests per second when paced (each request is sent at its
    /// scheduled time, or at once when the previous one ended late); as fast as the answers
    /// come when `None`.
    pub rate_per_connection: Option<f64>,
    /// A new connection for every request (its connect and handshake counted in its
    /// latency), instead of one kept alive.
    pub reconnect: bool,
}

/// What a load measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub total: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// The latencies of the successful requests, in microseconds, sorted.
    latencies_us: Vec<u32>,
    /// A few distinct failure messages.
    pub errors: Vec<String>,
    /// TLS connections made, and how many of them resumed an earlier session.
    pub handshakes: u64,
    pub resumed: u64,
}

impl LoadReport {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        (self.total - self.failed) as f64 / secs
    }

    /// The `p`-th percentile latency of the successful requests, in milliseconds.
    pub fn latency_ms(&self, p: f64) -> f64 {
        f64::from(percentile(&self.latencies_us, p)) / 1000.0
    }

    pub fn max_latency_ms(&self) -> f64 {
        f64::from(self.latencies_us.last().copied().unwrap_or(0)) / 1000.0
    }

    /// Pools another load's requests into this one (their times add up).
    pub fn merge(&mut self, other: LoadReport) {
        self.total += other.total;
        self.failed += other.failed;
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        self.handshakes += other.handshakes;
        self.resumed += other.resumed;
        for e in other.errors {
            keep_error(&mut self.errors, e);
        }
    }
}

fn keep_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < KEPT_ERRORS && !errors.contains(&e) {
        errors.push(e);
    }
}

/// A load under way.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    done: oneshot::Receiver<anyhow::Result<LoadReport>>,
}

/// Starts a load on threads of its own.
pub fn start(spec: LoadSpec) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, done) = oneshot::channel();
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name(crate::cpu::LOAD_THREADS.into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(crate::cpu::LOAD_THREADS)
                .enable_all()
                .build()
                .context("cannot make the load generator's runtime")
                .map(|rt| rt.block_on(run(spec, flag)));
            let _ = tx.send(result);
        });
    // When the thread cannot start, `tx` is dropped with it and `finish` says so.
    let _ = thread;
    Running { stop, done }
}

impl Running {
    /// Stops the load and returns what it measured.
    pub async fn finish(self) -> anyhow::Result<LoadReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.done
            .await
            .context("the load generator's thread ended without a report")?
    }
}

/// What the clients share: the stop flag and the count of requests begun.
struct Shared {
    spec: LoadSpec,
    stop: Arc<AtomicBool>,
    begun: AtomicU64,
    started: Instant,
}

impl Shared {
    /// Whether another request may begin.
    fn may_go_on(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && self.started.elapsed() < self.spec.warm_up + self.spec.max_duration
            && self.begun.fetch_add(1, Ordering::Relaxed) < self.spec.max_requests
    }

    /// Whether a request that begins now is recorded (the warm-up is over).
    fn recording(&self) -> bool {
        self.started.elapsed() >= self.spec.warm_up
    }
}

/// One client's tally.
#[derive(Default)]
struct Tally {
    total: u64,
    failed: u64,
    latencies_us: Vec<u32>,
    errors: Vec<String>,
    handshakes: u64,
    resumed: u64,
}

impl Tally {
    fn record(&mut self, latency: Duration, result: &Result<(), String>) {
        self.total += 1;
        match result {
            Ok(()) => {
                let us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
                self.latencies_us.push(us);
            }
            Err(e) => {
                self.failed += 1;
                keep_error(&mut self.errors, e.clone());
            }
        }
    }
}

async fn run(spec: LoadSpec, stop: Arc<AtomicBool>) -> LoadReport {
    let shared = Arc::new(Shared {
        spec,
        stop,
        begun: AtomicU64::new(0),
        started: Instant::now(),
    });
    let clients: Vec<_> = (0..shared.spec.connections)
        .map(|_| tokio::spawn(client(Arc::clone(&shared))))
        .collect();
    let mut report = LoadReport::default();
    for c in clients {
        let Ok(t) = c.await else { continue };
        report.total += t.total;
        report.failed += t.failed;
        report.latencies_us.extend(t.latencies_us);
        report.handshakes += t.handshakes;
        report.resumed += t.resumed;
        for e in t.errors {
            keep_error(&mut report.errors, e);
        }
    }
    report.elapsed = shared.started.elapsed().saturating_sub(shared.spec.warm_up);
    report.latencies_us.sort_unstable();
    report
}

async fn client(shared: Arc<Shared>) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<SendRequest<Empty<Bytes>>> = None;
    let interval = shared
        .spec
        .rate_per_connection
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next = tokio::time::Instant::now();
    while shared.may_go_on() {
        if let Some(interval) = interval {
            tokio::time::sleep_until(next).await;
            next = (next + interval).max(tokio::time::Instant::now());
        }
        let recording = shared.recording();
        let began = Instant::now();
        let result = tokio::time::timeout(
            REQUEST_TIMEOUT,
            request(&mut connection, &shared.spec.target, &mut tally),
        )
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        if recording {
            tally.record(began.elapsed(), &result);
        }
        if shared.spec.reconnect {
            connection = None;
        }
        if result.is_err() {
            connection = None;
            // A short pause, so that a refused connection does not spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tally
}

/// Sends one request on the client's connection, connecting first when it has none.
async fn request(
    connection: &mut Option<SendRequest<Empty<Bytes>>>,
    target: &Target,
    tally: &mut Tally,
) -> Result<(), String> {
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        let (sender, resumed) = connect(target).await?;
        if let Some(resumed) = resumed {
            tally.handshakes += 1;
            tally.resumed += u64::from(resumed);
        }
        *connection = Some(sender);
    }
    let Some(sender) = connection.as_mut() else {
        return Err("no connection".into());
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::get(target.path.as_str())
        .header(http::header::HOST, target.host.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    Ok(())
}

/// One `GET` of the target on a new connection; returns the body of a successful answer.
pub async fn get(target: &Target) -> anyhow::Result<String> {
    let (mut sender, _) = connect(target).await.map_err(anyhow::Error::msg)?;
    let req = http::Request::get(target.path.as_str())
        .header(http::header::HOST, target.host.as_str())
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
        .await
        .context("the request timed out")??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        anyhow::bail!("GET {} answered {status}: {}", target.path, body.trim());
    }
    Ok(body)
}

/// A new connection to the target; over TLS, with whether it resumed an earlier session.
async fn connect(target: &Target) -> Result<(SendRequest<Empty<Bytes>>, Option<bool>), String> {
    let stream = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = &target.tls else {
        return Ok((http1(stream).await?, None));
    };
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
        .connect(tls.name.clone(), stream)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok((http1(stream).await?, Some(resumed)))
}

async fn http1<S>(stream: S) -> Result<SendRequest<Empty<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_reports_pool_their_requests() {
        let mut a = LoadReport {
            total: 3,
            failed: 1,
            elapsed: Duration::from_secs(1),
            latencies_us: vec![1000, 3000],
            errors: vec!["x".into()],
            ..LoadReport::default()
        };
        let b = LoadReport {
            total: 2,
            failed: 0,
            elapsed: Duration::from_secs(1),
            latencies_us: vec![2000, 4000],
            errors: vec!["x".into(), "y".into()],
            ..LoadReport::default()
        };
        a.merge(b);
        assert_eq!((a.total, a.failed), (5, 1));
        assert_eq!(a.throughput(), 2.0);
        assert_eq!(a.latency_ms(50.0), 2.0);
        assert_eq!(a.max_latency_ms(), 4.0);
        assert_eq!(a.errors, vec!["x".to_string(), "y".to_string()]);
    }
}
