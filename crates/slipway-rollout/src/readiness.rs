//! Waiting for a new instance to become ready.

use std::time::Duration;

use slipway_spec::FailureCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Instance, Probe, ProbeResult, Runtime};

/// How a new instance proves it is ready.
///
/// Until it is first ready an instance is probed every `min(period, 50 ms)`, so that fast apps
/// roll fast; it must pass `success_threshold` probes in a row, and fails when it is not ready
/// `initial_delay + period × failure_threshold` after it started.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub probe: Probe,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// For [`Probe::Running`]: how long the instance must run without exiting.
    pub min_running: Duration,
}

/// The fastest a starting instance is probed.
pub const STARTUP_PROBE_INTERVAL: Duration = Duration::from_millis(50);

impl Readiness {
    /// App Platform's defaults for a check of this kind: no initial delay, every 10 s, 1 s
    /// timeout, 1 success, 9 failures.
    pub fn with_defaults(probe: Probe) -> Self {
        Readiness {
            probe,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 9,
            min_running: Duration::from_secs(1),
        }
    }

    /// How long after its start an instance may take to become ready.
    pub fn deadline(&self) -> Duration {
        let base = self.initial_delay + self.period * self.failure_threshold.max(1);
        match self.probe {
            Probe::Running => base.max(self.min_running + self.timeout),
            _ => base,
        }
    }
}

/// Why an instance did not become ready.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotReady {
    #[error("not ready after {seconds:.1} s (last check: {last})")]
    Timeout { seconds: f64, last: String },
    #[error("exited with code {code} before it was ready")]
    Exited { code: i64 },
    #[error("is unhealthy: {why}")]
    Unhealthy { why: String },
    #[error("canceled before it was ready")]
    Canceled,
}

impl NotReady {
    /// The stable code of an instance that did not become ready: it failed its health check
    /// (not ready in time, or unhealthy), it exited, or the rollout was canceled.
    pub fn code(&self) -> FailureCode {
        match self {
            NotReady::Timeout { .. } | NotReady::Unhealthy { .. } => FailureCode::HealthCheckFailed,
            NotReady::Exited { .. } => FailureCode::RolloutFailed,
            NotReady::Canceled => FailureCode::Canceled,
        }
    }
}

/// Probes `instance` until it is ready, fails, or `cancel` fires.
pub(crate) async fn wait_ready<R: Runtime>(
    rt: &R,
    instance: &Instance,
    r: &Readiness,
    cancel: &CancellationToken,
) -> Result<(), NotReady> {
    let started = Instant::now();
    let deadline = started + r.deadline();
    let pause = |d: Duration| async move {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            () = cancel.cancelled() => Err(NotReady::Canceled),
        }
    };
    pause(r.initial_delay).await?;
    if r.probe == Probe::Running {
        pause(r.min_running).await?;
    }
    let interval = r.period.min(STARTUP_PROBE_INTERVAL);
    let mut successes = 0;
    let mut last = String::from("no check ran");
    loop {
        match rt.probe(instance, &r.probe, r.timeout).await {
            ProbeResult::Ready => {
                successes += 1;
                if successes >= r.success_threshold.max(1) {
                    return Ok(());
                }
            }
            ProbeResult::NotReady(why) => {
                successes = 0;
                last = why;
            }
            ProbeResult::Exited(code) => return Err(NotReady::Exited { code }),
            ProbeResult::Unhealthy(why) => return Err(NotReady::Unhealthy { why }),
        }
        if Instant::now() >= deadline {
            return Err(NotReady::Timeout {
                seconds: started.elapsed().as_secs_f64(),
                last,
            });
        }
        pause(interval).await?;
    }
}
