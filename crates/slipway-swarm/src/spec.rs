//! A component as a Swarm service spec: a pure mapping, tested without Docker.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, HealthConfig, Mount, MountType, MountVolumeOptions, NetworkAttachmentConfig,
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecModeReplicatedJob,
    ServiceSpecRollbackConfig, ServiceSpecRollbackConfigFailureActionEnum,
    ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum, TaskSpec,
    TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use slipway_spec::labels;
use slipway_spec::{Amount, ComponentKind, HealthCheck, RolloutSpec, Termination};

/// Docker's default monitor period, used when a component has no health check.
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

/// Everything Slipway decides about one component's Swarm service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceDef {
    pub daemon_id: String,
    pub app_id: String,
    pub component: String,
    pub kind: Option<ComponentKind>,
    /// The deployment that made this version of the service.
    pub deployment_id: String,
    /// The image reference tasks run, as is (pin it by digest: Swarm does not resolve it).
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Replaces the image's command, run by `/bin/sh -c`.
    pub run_command: Option<String>,
    /// Tasks (`instance_count`); for a job, how many must complete.
    pub replicas: u32,
    /// The port published in host mode on each task's node, for the ingress.
    pub http_port: Option<u16>,
    pub health_check: Option<HealthCheck>,
    pub rollout: Option<RolloutSpec>,
    pub termination: Option<Termination>,
    /// The app's overlay network, joined with the component's name as alias.
    pub network: Option<String>,
    /// A named volume and where it is mounted (databases).
    pub volume: Option<(String, String)>,
    /// The node the tasks must run on (databases: where their volume lives).
    pub pin_node: Option<String>,
}

impl ServiceDef {
    /// The labels of the service, its containers and its volume: those of the single-engine
    /// runtime.
    pub fn labels(&self) -> HashMap<String, String> {
        let mut l = HashMap::from([
            (labels::DAEMON.to_string(), self.daemon_id.clone()),
            (labels::APP.to_string(), self.app_id.clone()),
            (labels::COMPONENT.to_string(), self.component.clone()),
            (labels::DEPLOYMENT.to_string(), self.deployment_id.clone()),
        ]);
        if let Some(kind) = self.kind {
            l.insert(labels::KIND.to_string(), kind.as_str().to_string());
        }
        l
    }

    fn is_job(&self) -> bool {
        self.kind == Some(ComponentKind::Job)
    }
}

/// The short form of an app ID in Swarm's object names: the first 12 characters of the ID
/// without its dashes (Docker limits a service name to 63 characters).
pub fn short_id(app_id: &str) -> String {
    app_id.chars().filter(|c| *c != '-').take(12).collect()
}

/// The Swarm service of a component: `slipway-<short app id>-<component>`.
pub fn service_name(app_id: &str, component: &str) -> String {
    format!("slipway-{}-{component}", short_id(app_id))
}

/// The app's overlay network: `slipway-<short app id>`, the name its network has on one
/// engine.
pub fn network_name(app_id: &str) -> String {
    format!("slipway-{}", short_id(app_id))
}

/// How Swarm replaces tasks: `(parallelism, start_first, monitor)`.
///
/// With `max_surge` ≥ 1 (the default is 1) new tasks start, and become healthy, before old
/// ones stop, `max_surge` at a time; with `max_surge` 0 old tasks stop first,
/// `max_unavailable` at a time (at least one). The monitor period is the health check's
/// period (Docker's 5 s without one): a new task that fails within it fails the update.
pub fn update_settings(
    rollout: Option<&RolloutSpec>,
    replicas: u32,
    health: Option<&HealthCheck>,
) -> (u32, bool, Duration) {
    let surge = rollout
        .and_then(|r| r.max_surge)
        .unwrap_or(Amount::Count(1))
        .resolve(replicas, true);
    let unavailable = rollout
        .and_then(|r| r.max_unavailable)
        .unwrap_or(Amount::Count(0))
        .resolve(replicas, false);
    let monitor = health
        .and_then(|h| h.period_seconds)
        .filter(|p| p.is_finite() && *p > 0.0)
        .map_or(DEFAULT_MONITOR, Duration::from_secs_f64);
    if surge >= 1 {
        (surge, true, monitor)
    } else {
        (unavailable.max(1), false, monitor)
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn secs(s: Option<f64>, default: f64) -> Duration {
    Duration::from_secs_f64(s.filter(|v| v.is_finite() && *v >= 0.0).unwrap_or(default))
}

/// The container health check from the spec's: its timing, with the image's own `HEALTHCHECK`
/// command (Swarm runs checks inside the container, so an HTTP probe needs a program in the
/// image; a `FROM scratch` image brings its own, as the example's `hello check`).
fn health_config(h: &HealthCheck) -> HealthConfig {
    HealthConfig {
        test: None,
        interval: Some(nanos(
            secs(h.period_seconds, 10.0).max(Duration::from_millis(1)),
        )),
        timeout: Some(nanos(
            secs(h.timeout_seconds, 1.0).max(Duration::from_millis(1)),
        )),
        retries: Some(i64::from(h.failure_threshold.unwrap_or(9).max(1))),
        start_period: Some(nanos(secs(h.initial_delay_seconds, 0.0))),
        ..Default::default()
    }
}

/// The Swarm service spec of a component. `force_update` is kept from the running service so
/// that applying a spec never restarts tasks by itself.
pub fn service_spec(def: &ServiceDef, force_update: u64) -> ServiceSpec {
    let labels = def.labels();
    let mut env: Vec<String> = def.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(port) = def.http_port
        && !def.env.contains_key("PORT")
    {
        env.push(format!("PORT={port}"));
    }
    let grace = secs(
        def.termination
            .as_ref()
            .and_then(|t| t.grace_period_seconds),
        Termination::DEFAULT_GRACE_SECONDS,
    );
    let mounts = def.volume.as_ref().map(|(name, target)| {
        vec![Mount {
            target: Some(target.clone()),
            source: Some(name.clone()),
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                labels: Some(labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }]
    });
    let container = TaskSpecContainerSpec {
        image: Some(def.image.clone()),
        labels: Some(labels.clone()),
        command: def
            .run_command
            .as_ref()
            .map(|c| vec!["/bin/sh".into(), "-c".into(), c.clone()]),
        env: Some(env),
        mounts,
        stop_grace_period: Some(nanos(grace)),
        health_check: match def.kind {
            // Workers and jobs serve nothing to check: an image's HEALTHCHECK (often the same
            // image as a service's) would have Swarm replace them as unhealthy.
            Some(ComponentKind::Worker | ComponentKind::Job) => Some(HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            _ => def.health_check.as_ref().map(health_config),
        },
        ..Default::default()
    };
    let restart = if def.is_job() {
        TaskSpecRestartPolicyConditionEnum::NONE
    } else {
        TaskSpecRestartPolicyConditionEnum::ANY
    };
    let task = TaskSpec {
        container_spec: Some(container),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(restart),
            delay: Some(nanos(Duration::from_secs(1))),
            ..Default::default()
        }),
        placement: def.pin_node.as_ref().map(|node| TaskSpecPlacement {
            constraints: Some(vec![format!("node.id=={node}")]),
            ..Default::default()
        }),
        force_update: Some(force_update),
        networks: def.network.as_ref().map(|n| {
            vec![NetworkAttachmentConfig {
                target: Some(n.clone()),
                aliases: Some(vec![def.component.clone()]),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };
    let mode = if def.is_job() {
        ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob {
                max_concurrent: Some(i64::from(def.replicas.max(1))),
                total_completions: Some(i64::from(def.replicas.max(1))),
            }),
            ..Default::default()
        }
    } else {
        ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(def.replicas)),
            }),
            ..Default::default()
        }
    };
    // A database's volume is not shared by two tasks: its old task stops first.
    let (parallelism, start_first, monitor) = if def.volume.is_some() {
        (1, false, DEFAULT_MONITOR)
    } else {
        update_settings(
            def.rollout.as_ref(),
            def.replicas,
            def.health_check.as_ref(),
        )
    };
    let (update_config, rollback_config) = if def.is_job() {
        (None, None)
    } else {
        (
            Some(ServiceSpecUpdateConfig {
                parallelism: Some(i64::from(parallelism)),
                delay: Some(0),
                failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
                monitor: Some(nanos(monitor)),
                max_failure_ratio: Some(0.0),
                order: Some(if start_first {
                    ServiceSpecUpdateConfigOrderEnum::START_FIRST
                } else {
                    ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
                }),
            }),
            Some(ServiceSpecRollbackConfig {
                parallelism: Some(i64::from(parallelism)),
                delay: Some(0),
                failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
                monitor: Some(nanos(monitor)),
                max_failure_ratio: Some(0.0),
                order: Some(if start_first {
                    ServiceSpecRollbackConfigOrderEnum::START_FIRST
                } else {
                    ServiceSpecRollbackConfigOrderEnum::STOP_FIRST
                }),
            }),
        )
    };
    let endpoint_spec = def.http_port.map(|port| EndpointSpec {
        ports: Some(vec![EndpointPortConfig {
            protocol: Some(EndpointPortConfigProtocolEnum::TCP),
            target_port: Some(i64::from(port)),
            // No published port: Docker chooses one per task, so that old and new tasks can
            // run side by side on one node.
            published_port: None,
            publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
            ..Default::default()
        }]),
        ..Default::default()
    });
    ServiceSpec {
        name: Some(service_name(&def.app_id, &def.component)),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(mode),
        update_config,
        rollback_config,
        endpoint_spec,
        ..Default::default()
    }
}

/// The spec of a component's canary (see [`crate::HealthGate`]): `def` as one task named
/// `name`, with the service's labels, env, health check and host-mode port, on the app's
/// network but without the component's alias, so that no other component resolves the
/// component's name to a version not yet proven. It is never updated, so it has no update or
/// rollback settings.
pub fn canary_spec(def: &ServiceDef, name: &str) -> ServiceSpec {
    let one = ServiceDef {
        replicas: 1,
        ..def.clone()
    };
    let mut spec = service_spec(&one, 0);
    spec.name = Some(name.to_string());
    if let Some(networks) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.networks.as_mut())
    {
        for n in networks {
            n.aliases = None;
        }
    }
    spec.update_config = None;
    spec.rollback_config = None;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ServiceDef {
        ServiceDef {
            daemon_id: "d1".into(),
            app_id: "a1".into(),
            component: "web".into(),
            kind: Some(ComponentKind::Service),
            deployment_id: "dep1".into(),
            image: "127.0.0.1:5000/slipway/a1-web:v1@sha256:00".into(),
            replicas: 3,
            http_port: Some(8080),
            ..Default::default()
        }
    }

    #[test]
    fn surge_means_start_first_and_no_surge_means_stop_first() {
        assert_eq!(update_settings(None, 3, None), (1, true, DEFAULT_MONITOR));
        let r = RolloutSpec {
            max_surge: Some(Amount::Count(0)),
            max_unavailable: Some(Amount::Percent(50)),
            ..Default::default()
        };
        assert_eq!(update_settings(Some(&r), 4, None).0, 2);
        assert!(!update_settings(Some(&r), 4, None).1);
        let r = RolloutSpec {
            max_surge: Some(Amount::Count(0)),
            max_unavailable: Some(Amount::Count(0)),
            ..Default::default()
        };
        assert_eq!(update_settings(Some(&r), 4, None).0, 1);
        let r = RolloutSpec {
            max_surge: Some(Amount::Percent(50)),
            ..Default::default()
        };
        assert_eq!(
            update_settings(Some(&r), 3, None),
            (2, true, DEFAULT_MONITOR)
        );
        let h = HealthCheck {
            period_seconds: Some(0.5),
            ..Default::default()
        };
        assert_eq!(
            update_settings(None, 1, Some(&h)).2,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_service_rolls_back_on_failure_and_labels_service_and_containers() {
        let s = service_spec(&def(), 7);
        let labels = s.labels.clone().unwrap();
        assert_eq!(labels[labels::DAEMON], "d1");
        assert_eq!(labels[labels::KIND], "service");
        let task = s.task_template.unwrap();
        assert_eq!(task.force_update, Some(7));
        let c = task.container_spec.unwrap();
        assert_eq!(c.labels.unwrap(), labels);
        assert!(c.env.unwrap().contains(&"PORT=8080".to_string()));
        assert!(c.health_check.is_none(), "the image's HEALTHCHECK is kept");
        let u = s.update_config.unwrap();
        assert_eq!(
            u.failure_action,
            Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK)
        );
        assert_eq!(u.order, Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST));
        assert_eq!(s.mode.unwrap().replicated.unwrap().replicas, Some(3));
        let port = &s.endpoint_spec.unwrap().ports.unwrap()[0];
        assert_eq!(
            port.publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        assert_eq!(port.published_port, None);
    }

    #[test]
    fn the_health_check_times_the_container_check() {
        let mut d = def();
        d.health_check = Some(HealthCheck {
            http_path: Some("/healthz".into()),
            period_seconds: Some(0.2),
            timeout_seconds: Some(1.0),
            failure_threshold: Some(3),
            initial_delay_seconds: Some(0.5),
            ..Default::default()
        });
        let s = service_spec(&d, 0);
        let h = s
            .task_template
            .unwrap()
            .container_spec
            .unwrap()
            .health_check
            .unwrap();
        assert_eq!(h.test, None);
        assert_eq!(h.interval, Some(200_000_000));
        assert_eq!(h.retries, Some(3));
        assert_eq!(h.start_period, Some(500_000_000));
        assert_eq!(s.update_config.unwrap().monitor, Some(200_000_000));
    }

    #[test]
    fn a_canary_is_one_task_of_the_same_definition_without_the_alias() {
        let mut d = def();
        d.network = Some("slipway-a1".into());
        let s = canary_spec(&d, "slipway-a1-web-canary-dep1");
        assert_eq!(s.name.as_deref(), Some("slipway-a1-web-canary-dep1"));
        assert_eq!(s.labels, Some(d.labels()));
        assert_eq!(s.mode.unwrap().replicated.unwrap().replicas, Some(1));
        let task = s.task_template.unwrap();
        let net = &task.networks.unwrap()[0];
        assert_eq!(net.target.as_deref(), Some("slipway-a1"));
        assert_eq!(net.aliases, None);
        assert_eq!(task.container_spec.unwrap().image, Some(d.image.clone()));
        assert_eq!(
            s.endpoint_spec.unwrap().ports.unwrap()[0].publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        assert!(s.update_config.is_none());
    }

    #[test]
    fn a_job_is_a_replicated_job_that_is_never_restarted() {
        let mut d = def();
        d.kind = Some(ComponentKind::Job);
        d.http_port = None;
        d.replicas = 1;
        let s = service_spec(&d, 0);
        let mode = s.mode.unwrap();
        assert!(mode.replicated.is_none());
        assert_eq!(mode.replicated_job.unwrap().total_completions, Some(1));
        let task = s.task_template.unwrap();
        assert_eq!(
            task.restart_policy.unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        assert!(s.update_config.is_none());
        // The image's HEALTHCHECK is off: a job serves nothing.
        assert_eq!(
            task.container_spec.unwrap().health_check.unwrap().test,
            Some(vec!["NONE".to_string()])
        );
    }

    #[test]
    fn a_database_is_pinned_to_its_node_with_a_labelled_volume() {
        let mut d = def();
        d.kind = Some(ComponentKind::Database);
        d.http_port = None;
        d.replicas = 1;
        d.volume = Some(("slipway-a1-db".into(), "/data".into()));
        d.pin_node = Some("node1".into());
        let s = service_spec(&d, 0);
        let task = s.task_template.unwrap();
        assert_eq!(
            task.placement.unwrap().constraints.unwrap(),
            vec!["node.id==node1"]
        );
        let mount = &task.container_spec.unwrap().mounts.unwrap()[0];
        assert_eq!(mount.source.as_deref(), Some("slipway-a1-db"));
        assert_eq!(
            mount
                .volume_options
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap()[labels::DAEMON],
            "d1"
        );
        assert_eq!(
            s.update_config.unwrap().order,
            Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST)
        );
    }
}
