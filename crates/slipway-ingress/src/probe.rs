//! Instances that refuse connections leave rotation until they accept them again.
//!
//! A connection to an instance that cannot be made (refused, reset, timed out) takes the
//! instance out of rotation at once, whatever the engine last said of it: the engine may be
//! down and its table stale. Requests then go to the component's other instances; one task
//! probes the instance in the background, 100 ms after the failure and then twice as long
//! after each failed probe (5 s at most), and puts it back once a connection is made and,
//! when the component has an HTTP health path, that path answers 2xx or 3xx. The probe stops
//! when the instance leaves its pool (drained or ejected by the engine).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::table::Backend;

/// The first probe's delay after a failure.
pub(crate) const FIRST_PROBE: Duration = Duration::from_millis(100);
/// The longest delay between two probes.
pub(crate) const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long one probe may take, connecting and answering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Takes `backend` out of rotation after a connection to it could not be made, and starts
/// its probe unless one is under way.
pub(crate) fn connect_failed(backend: &Arc<Backend>) {
    if !backend.out.swap(true, Ordering::SeqCst) {
        tracing::warn!(instance = %backend.id, addr = %backend.addr, "an instance refused a connection: out of rotation until it accepts one again");
    }
    if !backend.probing.swap(true, Ordering::SeqCst) {
        tokio::spawn(probe(Arc::downgrade(backend)));
    }
}

/// Probes `backend` with backoff until it is back in rotation or has left its pool.
async fn probe(backend: Weak<Backend>) {
    let mut delay = FIRST_PROBE;
    loop {
        tokio::time::sleep(delay).await;
        let Some(b) = backend.upgrade() else { return };
        if !b.in_pool() {
            b.probing.store(false, Ordering::SeqCst);
            return;
        }
        if !b.out.load(Ordering::SeqCst) {
            // A request's connection was made meanwhile. A failure just after it may have
            // found the probe still marked under way: look once more after letting go.
            b.probing.store(false, Ordering::SeqCst);
            if b.out.load(Ordering::SeqCst) && !b.probing.swap(true, Ordering::SeqCst) {
                delay = FIRST_PROBE;
                continue;
            }
            return;
        }
        let health_path = b.pool.upgrade().and_then(|p| {
            p.health_path
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        let addr = b.addr;
        // The instance is not held while the probe waits.
        drop(b);
        let healthy = tokio::time::timeout(PROBE_TIMEOUT, check(addr, health_path.as_deref()))
            .await
            .unwrap_or(false);
        let Some(b) = backend.upgrade() else { return };
        if healthy {
            b.probing.store(false, Ordering::SeqCst);
            b.connected();
            return;
        }
        tracing::debug!(instance = %b.id, %addr, next_ms = (delay * 2).min(MAX_PROBE_INTERVAL).as_millis() as u64, "an instance out of rotation still fails its probe");
        delay = (delay * 2).min(MAX_PROBE_INTERVAL);
    }
}

/// Whether `addr` accepts a connection and, with `health_path`, answers a GET of it with 2xx
/// or 3xx.
async fn check(addr: std::net::SocketAddr, health_path: Option<&str>) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let Some(path) = health_path else {
        return true;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: slipway-ingress-probe\r\nconnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // `HTTP/1.1 200` is all that is read.
    let mut status = [0u8; 12];
    if stream.read_exact(&mut status).await.is_err() {
        return false;
    }
    status.starts_with(b"HTTP/1.") && matches!(status[9], b'2' | b'3')
}
