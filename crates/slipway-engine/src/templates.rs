//! How a spec becomes containers: names, instance specs, readiness checks and rollout bounds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use slipway_rollout::{Bounds, InstanceSpec, Probe, Readiness};
use slipway_spec::{
    AppSpec, ComponentKind, Deployment, HealthCheck, RolloutSpec, Termination, labels,
};

/// The short form of an app ID used in Docker object names.
pub(crate) fn short_id(app_id: &str) -> String {
    app_id.chars().filter(|c| *c != '-').take(12).collect()
}

pub(crate) fn network_name(app_id: &str) -> String {
    format!("slipway-{}", short_id(app_id))
}

pub(crate) fn volume_name(app_id: &str, database: &str) -> String {
    format!("slipway-{}-{database}", short_id(app_id))
}

pub(crate) fn image_tag(app_id: &str, component: &str, commit: &str) -> String {
    let commit: String = commit.chars().take(12).collect();
    format!("slipway/{}-{component}:{commit}", short_id(app_id))
}

/// The labels every object of the daemon carries, besides the per-object ones.
pub(crate) fn daemon_labels(daemon_id: &str, app_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::DAEMON.to_string(), daemon_id.to_string()),
        (labels::APP.to_string(), app_id.to_string()),
    ])
}

/// The labels of an image built for a component of an app: names of their own, which the
/// containers made from the image inherit without becoming the app's.
pub(crate) fn image_labels(
    daemon_id: &str,
    app_id: &str,
    component: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::IMAGE_DAEMON.to_string(), daemon_id.to_string()),
        (labels::IMAGE_APP.to_string(), app_id.to_string()),
        (labels::IMAGE_COMPONENT.to_string(), component.to_string()),
    ])
}

/// The label filters that find an app's images: those of this version, then those an earlier
/// version built (with the containers' label names).
pub(crate) fn image_filters<'a>(
    daemon_id: &'a str,
    app_id: &'a str,
) -> [[(&'static str, &'a str); 2]; 2] {
    [
        [
            (labels::IMAGE_APP, app_id),
            (labels::IMAGE_DAEMON, daemon_id),
        ],
        [(labels::APP, app_id), (labels::DAEMON, daemon_id)],
    ]
}

/// The component an image was built for, from its labels.
pub(crate) fn image_component(image_labels: &HashMap<String, String>) -> String {
    image_labels
        .get(labels::IMAGE_COMPONENT)
        .or_else(|| image_labels.get(labels::COMPONENT))
        .cloned()
        .unwrap_or_default()
}

/// The instance spec of a service, worker or job of `deployment`.
pub(crate) fn instance_spec(
    app_name: &str,
    deployment: &Deployment,
    component: &str,
    daemon_id: &str,
) -> Option<InstanceSpec> {
    let spec = &deployment.spec;
    let kind = spec.kind_of(component)?;
    let common = match kind {
        ComponentKind::Service => spec.service(component)?.common(),
        ComponentKind::Worker => spec.worker(component)?.common(),
        ComponentKind::Job => spec.jobs.iter().find(|j| j.name == component)?.common(),
        ComponentKind::Database => return None,
    };
    let image = deployment.component(component)?.image.as_ref()?.id.clone();
    let mut env = spec.run_envs(common);
    let mut ports = Vec::new();
    if let Some(service) = spec.service(component) {
        let port = service.http_port.unwrap_or(8080);
        env.insert("PORT".into(), port.to_string());
        ports.push(port);
        if let Some(p) = service.health_check.as_ref().and_then(|h| h.port)
            && p != port
        {
            ports.push(p);
        }
    }
    Some(InstanceSpec {
        app_id: deployment.app_id.clone(),
        app_name: app_name.to_string(),
        component: component.to_string(),
        kind: Some(kind),
        deployment_id: deployment.id.clone(),
        image,
        env,
        run_command: common.run_command.map(str::to_string),
        ports,
        network: Some(network_name(&deployment.app_id)),
        labels: daemon_labels(daemon_id, &deployment.app_id),
    })
}

fn seconds(v: Option<f64>, default: f64) -> Duration {
    Duration::try_from_secs_f64(v.unwrap_or(default).max(0.0)).unwrap_or(Duration::ZERO)
}

/// How a new instance of `component` proves it is ready.
pub(crate) fn readiness(
    spec: &AppSpec,
    component: &str,
    image_has_healthcheck: bool,
    worker_min_ready: Duration,
) -> Readiness {
    if let Some(service) = spec.service(component) {
        let port = service.http_port.unwrap_or(8080);
        return match &service.health_check {
            Some(hc) => from_health_check(hc, port),
            None if image_has_healthcheck => Readiness::with_defaults(Probe::DockerHealth),
            None => Readiness::with_defaults(Probe::Tcp { port }),
        };
    }
    let min = spec
        .worker(component)
        .and_then(|w| w.rollout.as_ref())
        .and_then(|r| r.min_ready_seconds)
        .map_or(worker_min_ready, |s| seconds(Some(s), 0.0));
    Readiness {
        min_running: min,
        ..Readiness::with_defaults(Probe::Running)
    }
}

fn from_health_check(hc: &HealthCheck, http_port: u16) -> Readiness {
    let port = hc.port.unwrap_or(http_port);
    let probe = match &hc.http_path {
        Some(path) => Probe::Http {
            port,
            path: path.clone(),
        },
        None => Probe::Tcp { port },
    };
    let d = Readiness::with_defaults(probe.clone());
    Readiness {
        probe,
        initial_delay: seconds(hc.initial_delay_seconds, d.initial_delay.as_secs_f64()),
        period: seconds(hc.period_seconds, d.period.as_secs_f64()),
        timeout: seconds(hc.timeout_seconds, d.timeout.as_secs_f64()),
        success_threshold: hc.success_threshold.unwrap_or(d.success_threshold),
        failure_threshold: hc.failure_threshold.unwrap_or(d.failure_threshold),
        min_running: d.min_running,
    }
}

fn rollout_spec<'a>(spec: &'a AppSpec, component: &str) -> Option<&'a RolloutSpec> {
    spec.service(component)
        .and_then(|s| s.rollout.as_ref())
        .or_else(|| spec.worker(component).and_then(|w| w.rollout.as_ref()))
}

/// The rollout bounds of a component: surge 1 and unavailable 0 unless its spec says otherwise.
pub(crate) fn bounds(spec: &AppSpec, component: &str, target: u32) -> Bounds {
    let r = rollout_spec(spec, component);
    let surge = r
        .and_then(|r| r.max_surge)
        .map_or(1, |a| a.resolve(target, true));
    let unavailable = r
        .and_then(|r| r.max_unavailable)
        .map_or(0, |a| a.resolve(target, false));
    Bounds::new(target, surge, unavailable)
}

/// The instance count of a service or worker.
pub(crate) fn instance_count(spec: &AppSpec, component: &str) -> u32 {
    spec.service(component)
        .map(|s| s.common().instance_count())
        .or_else(|| spec.worker(component).map(|w| w.common().instance_count()))
        .unwrap_or(0)
}

/// `(drain, grace)` of a component.
pub(crate) fn termination(spec: &AppSpec, component: &str) -> (Duration, Duration) {
    let t: Option<&Termination> = spec
        .service(component)
        .and_then(|s| s.termination.as_ref())
        .or_else(|| spec.worker(component).and_then(|w| w.termination.as_ref()));
    (
        seconds(
            t.and_then(|t| t.drain_seconds),
            Termination::DEFAULT_DRAIN_SECONDS,
        ),
        seconds(
            t.and_then(|t| t.grace_period_seconds),
            Termination::DEFAULT_GRACE_SECONDS,
        ),
    )
}
