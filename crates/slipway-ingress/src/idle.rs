//! A backend's idle kept-alive connections, each tagged with the ingress worker whose runtime
//! drives it: a worker only takes its own back, the most recently used first.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an idle connection to a backend is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most idle connections kept per backend.
const MAX_IDLE: usize = 1024;

thread_local! {
    /// The ingress worker this thread is, for its own idle connections.
    pub(crate) static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

pub(crate) struct IdlePool<T>(Mutex<Vec<Idle<T>>>);

struct Idle<T> {
    conn: T,
    since: Instant,
    worker: usize,
}

impl<T> Default for IdlePool<T> {
    fn default() -> Self {
        IdlePool(Mutex::new(Vec::new()))
    }
}

impl<T> std::fmt::Debug for IdlePool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |v| v.len());
        f.debug_struct("IdlePool").field("idle", &n).finish()
    }
}

impl<T> IdlePool<T> {
    /// This worker's most recently used connection that has not waited too long.
    pub(crate) fn pop(&self) -> Option<T> {
        let worker = WORKER.get();
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = idle.iter().rposition(|c| c.worker == worker) {
            let c = idle.remove(i);
            if c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.conn);
            }
        }
        None
    }

    pub(crate) fn push(&self, conn: T) {
        let now = Instant::now();
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest are at the front: drop those that waited too long.
        let stale = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
            .count();
        idle.drain(..stale);
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: now,
            worker: WORKER.get(),
        });
    }
}
