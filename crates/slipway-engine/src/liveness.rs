//! Liveness: a serving instance whose `liveness_health_check` fails `failure_threshold` times
//! in a row is taken out of the ingress at once, stopped, and replaced by the reconciler.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use slipway_rollout::{Probe, ProbeResult, Runtime};
use slipway_spec::labels;

use crate::{Engine, templates};

/// What the monitor remembers of one instance.
#[derive(Debug)]
struct Seen {
    first: Instant,
    last_probe: Option<Instant>,
    failures: u32,
}

impl Engine {
    /// Probes every serving instance that has a liveness check, until the engine shuts down.
    pub(crate) async fn watch_liveness(&self) {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            if let Err(e) = self.liveness_pass(&mut seen).await {
                tracing::debug!(error = %e, "a liveness pass failed");
            }
        }
    }

    async fn liveness_pass(
        &self,
        seen: &mut HashMap<String, Seen>,
    ) -> Result<(), crate::EngineError> {
        let inner = &self.inner;
        let (apps, _) = inner.store.apps(0, u64::MAX >> 1).await?;
        let mut alive = Vec::new();
        for app in apps {
            let Some(active) = inner.store.active_deployment(&app.id).await? else {
                continue;
            };
            for service in &active.spec.services {
                let Some(check) = &service.liveness_health_check else {
                    continue;
                };
                let http_port = service.http_port.unwrap_or(8080);
                let port = check.port.unwrap_or(http_port);
                let probe = match &check.http_path {
                    Some(path) => Probe::Http {
                        port,
                        path: path.clone(),
                    },
                    None => Probe::Tcp { port },
                };
                let seconds = |v: Option<f64>, d: f64| {
                    Duration::try_from_secs_f64(v.unwrap_or(d).max(0.0)).unwrap_or_default()
                };
                let initial = seconds(check.initial_delay_seconds, 0.0);
                let period = seconds(check.period_seconds, 10.0);
                let timeout = seconds(check.timeout_seconds, 1.0);
                let threshold = check.failure_threshold.unwrap_or(9).max(1);
                let running = inner
                    .runtime
                    .list(&[
                        (labels::APP, app.id.as_str()),
                        (labels::COMPONENT, service.name.as_str()),
                        (labels::DAEMON, inner.config.daemon_id.as_str()),
                    ])
                    .await?;
                for instance in running.into_iter().filter(|i| i.running) {
                    alive.push(instance.id.clone());
                    let now = Instant::now();
                    let s = seen.entry(instance.id.clone()).or_insert(Seen {
                        first: now,
                        last_probe: None,
                        failures: 0,
                    });
                    if now < s.first + initial || s.last_probe.is_some_and(|t| now < t + period) {
                        continue;
                    }
                    s.last_probe = Some(now);
                    match inner.runtime.probe(&instance, &probe, timeout).await {
                        ProbeResult::Ready => s.failures = 0,
                        outcome => {
                            s.failures += 1;
                            tracing::info!(instance = %instance.name, failures = s.failures, ?outcome, "liveness check failed");
                        }
                    }
                    if s.failures >= threshold {
                        tracing::warn!(instance = %instance.name, "failed its liveness check: taken out of service and replaced");
                        inner.ingress.eject(&instance.id);
                        let (_, grace) = templates::termination(&active.spec, &service.name);
                        if let Err(e) = inner.runtime.stop(&instance, grace).await {
                            tracing::warn!(instance = %instance.name, error = %e, "stopping a failed instance failed");
                        }
                        seen.remove(&instance.id);
                        if let Err(e) = self.reconcile(&app.id).await {
                            tracing::warn!(app = %app.name, error = %e, "replacing a failed instance failed");
                        }
                    }
                }
            }
        }
        seen.retain(|id, _| alive.contains(id));
        Ok(())
    }
}
