//! The health gate of a service component's rollout: Swarm alone only knows the image's own
//! `HEALTHCHECK`, and marks a task running as soon as its container started when the image
//! has none, so the spec's health check is run from the daemon, as the ingress runs it.
//!
//! - [`Swarm::start_canary`] starts a one-off copy of the new version (one task, the
//!   service's own definition, its port published in host mode) under a name of its own;
//!   [`Swarm::prove_canary`] probes it until it passes, and fails when it does not within the
//!   health check's budget. The real service is not touched until it passed.
//! - [`Swarm::prove_tasks`] probes every task of the service's current version once Swarm's
//!   update completed.

use std::time::Duration;

use bollard::models::TaskState;
use slipway_spec::HealthCheck;
use tokio::time::Instant;

use crate::endpoints::POLL;
use crate::error::SwarmError;
use crate::probe::{NodeAddrs, Prober, runs};
use crate::spec::{ServiceDef, canary_spec, service_name};
use crate::swarm::Swarm;
use crate::wait;

/// Swarm reports a task's state through its manager a moment after the container changed,
/// and a task with an image `HEALTHCHECK` runs only once that check passed: the budget is
/// counted from the first report of the task's container, plus this allowance.
const SETTLE: Duration = Duration::from_secs(2);

/// How a service component's tasks prove they serve.
#[derive(Debug, Clone)]
pub struct HealthGate {
    pub prober: Prober,
    /// The port the task serves on (published in host mode).
    pub port: u16,
    /// How long a started task may take to pass: `initial_delay + period × failure_threshold`
    /// (App Platform's defaults: 0 s, 10 s, 9), plus an allowance for Swarm's reports.
    pub budget: Duration,
    /// The pause between two probes of a task not yet passing.
    pub interval: Duration,
}

fn secs(s: Option<f64>, default: f64) -> Duration {
    Duration::from_secs_f64(s.filter(|v| v.is_finite() && *v >= 0.0).unwrap_or(default))
}

impl HealthGate {
    /// The gate of a service component (one with an HTTP port); `None` for other kinds.
    pub fn of(def: &ServiceDef) -> Option<HealthGate> {
        if def.kind != Some(slipway_spec::ComponentKind::Service) {
            return None;
        }
        let port = def.http_port?;
        let h = def.health_check.clone().unwrap_or_default();
        Some(HealthGate::new(&h, port))
    }

    /// The gate of health check `h` on `port`, with App Platform's defaults where `h` says
    /// nothing.
    pub fn new(h: &HealthCheck, port: u16) -> HealthGate {
        let period = secs(h.period_seconds, 10.0).max(Duration::from_millis(10));
        let budget = secs(h.initial_delay_seconds, 0.0)
            + period * h.failure_threshold.unwrap_or(9).max(1)
            + SETTLE;
        HealthGate {
            prober: Prober::new(h.http_path.clone(), secs(h.timeout_seconds, 1.0)),
            port,
            budget,
            interval: period.min(POLL),
        }
    }
}

/// The name of a component's canary in deployment `deployment_id`: its service's name with
/// `-canary-<deployment>`, within Docker's 63 characters.
pub fn canary_name(def: &ServiceDef) -> String {
    let dep: String = def
        .deployment_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    let suffix = format!("-canary-{dep}");
    let base: String = service_name(&def.app_id, &def.component)
        .chars()
        .take(63 - suffix.len())
        .collect();
    format!("{base}{suffix}")
}

impl Swarm {
    /// Starts the canary of `def` (replacing a leftover of the same name); returns its name.
    /// Remove it with [`Swarm::remove`] whatever happens next.
    pub async fn start_canary(&self, def: &ServiceDef) -> Result<String, SwarmError> {
        let name = canary_name(def);
        self.remove(&name).await?;
        tracing::info!(service = %name, image = %def.image, "starting the canary");
        self.docker()
            .create_service(canary_spec(def, &name), None)
            .await
            .map_err(SwarmError::docker(format!("creating the canary {name}")))?;
        Ok(name)
    }

    /// Probes the canary `name` of `component` until it passes; returns what it answered.
    /// Fails with [`SwarmError::CanaryFailed`] when its task does not pass within the gate's
    /// budget once its container started, or when no task started within `start_timeout`.
    pub async fn prove_canary(
        &self,
        name: &str,
        component: &str,
        gate: &HealthGate,
        start_timeout: Duration,
    ) -> Result<String, SwarmError> {
        let began = Instant::now();
        let mut started: Option<Instant> = None;
        let mut nodes = NodeAddrs::default();
        // The probe's last answer, and what Swarm said of the last task that failed.
        let mut answer: Option<String> = None;
        let mut failure: Option<String> = None;
        let mut failed = std::collections::BTreeSet::new();
        // The container of the task Swarm wants running, once it has one.
        let mut container: Option<String> = None;
        loop {
            for (task, published) in self.endpoints(name, gate.port).await? {
                let status = task.status.clone().unwrap_or_default();
                if matches!(status.state, Some(TaskState::STARTING | TaskState::RUNNING)) {
                    started.get_or_insert_with(Instant::now);
                }
                if matches!(status.state, Some(TaskState::FAILED | TaskState::REJECTED))
                    && failed.insert(task.id.clone().unwrap_or_default())
                {
                    started.get_or_insert_with(Instant::now);
                    let health = match status.container_status.clone().and_then(|c| c.container_id)
                    {
                        Some(c) => self.failed_health_check(&c).await,
                        None => None,
                    };
                    let said: Vec<String> = [status.message, status.err, health]
                        .into_iter()
                        .flatten()
                        .filter(|s| !s.is_empty())
                        .collect();
                    failure = Some(format!("its task failed: {}", said.join(": ")));
                }
                if task.desired_state != Some(TaskState::RUNNING) {
                    continue;
                }
                if let Some(c) = status.container_status.and_then(|c| c.container_id) {
                    container = Some(c);
                }
                let Some(port) = published else { continue };
                let addr = nodes.addr(self, &task, port).await;
                match gate.prober.probe(addr).await {
                    Ok(passed) if runs(&task) => return Ok(passed),
                    Ok(passed) => {
                        answer = Some(format!("{passed}, but Swarm does not report it running"));
                    }
                    Err(said) => answer = Some(said),
                }
            }
            let over = match started {
                Some(at) => at.elapsed() > gate.budget,
                None => began.elapsed() > start_timeout,
            };
            if over {
                let seconds = started.map_or(start_timeout, |_| gate.budget).as_secs_f64();
                // A task that runs the image's own HEALTHCHECK publishes its port only once
                // that check passed: until then, what the check answered is all there is.
                if answer.is_none()
                    && let Some(c) = &container
                {
                    answer = self.failed_health_check(c).await;
                }
                let last = match (answer, failure) {
                    (Some(a), Some(f)) => format!("{a}; {f}"),
                    (Some(a), None) => a,
                    (None, Some(f)) => f,
                    (None, None) => "no task of it started".to_string(),
                };
                return Err(SwarmError::CanaryFailed {
                    component: component.to_string(),
                    seconds,
                    last,
                });
            }
            tokio::time::sleep(gate.interval).await;
        }
    }

    /// Probes every task of the service's current version (`name` is the component's
    /// service) until as many as its replicas passed, calling `passed` with the task's ID, slot and answer.
    /// Fails with [`SwarmError::HealthCheckFailed`] naming the first task that did not pass
    /// within the gate's budget.
    pub async fn prove_tasks(
        &self,
        name: &str,
        component: &str,
        gate: &HealthGate,
        mut passed: impl FnMut(&str, Option<i64>, &str),
    ) -> Result<usize, SwarmError> {
        let began = Instant::now();
        let service = self
            .service(name)
            .await?
            .ok_or_else(|| SwarmError::Invalid {
                component: component.to_string(),
                reason: format!("the service {name} is gone"),
            })?;
        let want = wait::replicas(&service);
        let mut nodes = NodeAddrs::default();
        let mut proven = std::collections::BTreeSet::new();
        let mut last: Option<(String, String)> = None;
        loop {
            let tasks = self.endpoints(name, gate.port).await?;
            let mut pending = false;
            for (task, published) in &tasks {
                if !runs(task) || !wait::is_current(&service, task) {
                    continue;
                }
                let id = task.id.clone().unwrap_or_default();
                if proven.contains(&id) {
                    continue;
                }
                let who = task_name(component, &id, task.slot);
                let Some(port) = published else {
                    pending = true;
                    last = Some((who, "it publishes no port".into()));
                    continue;
                };
                let addr = nodes.addr(self, task, *port).await;
                match gate.prober.probe(addr).await {
                    Ok(answer) => {
                        passed(&id, task.slot, &answer);
                        proven.insert(id);
                    }
                    Err(answer) => {
                        pending = true;
                        last = Some((who, answer));
                    }
                }
            }
            if !pending && proven.len() >= want {
                return Ok(proven.len());
            }
            if began.elapsed() > gate.budget {
                let (task, last) = last.unwrap_or_else(|| {
                    (
                        format!("{component} (any)"),
                        format!("only {} of {want} new tasks run", proven.len()),
                    )
                });
                return Err(SwarmError::HealthCheckFailed {
                    component: component.to_string(),
                    task,
                    seconds: gate.budget.as_secs_f64(),
                    last,
                });
            }
            tokio::time::sleep(gate.interval).await;
        }
    }
}

/// `web.2 (abcdef0123)`: a task as the DEPLOY log names it.
pub fn task_name(component: &str, task_id: &str, slot: Option<i64>) -> String {
    let short: String = task_id.chars().take(10).collect();
    match slot {
        Some(slot) => format!("{component}.{slot} ({short})"),
        None => format!("{component} ({short})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_health_checks_with_an_allowance() {
        let h = HealthCheck {
            http_path: Some("/healthz".into()),
            period_seconds: Some(0.2),
            failure_threshold: Some(3),
            initial_delay_seconds: Some(1.0),
            ..Default::default()
        };
        let g = HealthGate::new(&h, 8080);
        assert_eq!(g.budget, Duration::from_millis(1600) + SETTLE);
        assert_eq!(g.prober.describe(), "GET /healthz");
        let g = HealthGate::new(&HealthCheck::default(), 8080);
        assert_eq!(g.budget, Duration::from_secs(90) + SETTLE);
        assert_eq!(g.prober.describe(), "TCP connect");
    }

    #[test]
    fn a_canary_name_fits_dockers_limit() {
        let def = ServiceDef {
            app_id: "0123456789abcdef".into(),
            component: "a-component-with-a-rather-long-name-indeed".into(),
            deployment_id: "9f8e7d6c-5b4a-3210".into(),
            ..Default::default()
        };
        let name = canary_name(&def);
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("-canary-9f8e7d6c5b"), "{name}");
        assert!(
            name.starts_with("slipway-0123456789ab-a-component"),
            "{name}"
        );
    }
}
