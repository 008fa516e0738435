//! The engine on Docker Swarm: what differs from one Docker engine.
//!
//! The deployment's phases, steps, logs and the all-or-nothing rule are the same; what carries
//! them out differs:
//! - images are pushed to the registry every node pulls from, and services are given the
//!   reference pinned by digest (stored with the deployment's component, as `pushed`);
//! - services and workers are Swarm services, rolled out by Swarm's rolling update (a restart
//!   bumps the force-update counter), followed from the task states into the steps and the
//!   DEPLOY log; Swarm rolls a failing update back by itself;
//! - the spec's health check gates a service's rollout, as readiness does on one engine
//!   (Swarm alone knows only the image's `HEALTHCHECK`, and without one calls a task running
//!   once its container started): a build deployment first runs the new version as a canary
//!   (a one-task Swarm service of its own, removed whatever happens) and probes it from the
//!   daemon as the ingress does ([`slipway_swarm::HealthGate`]); the service is updated only
//!   once the canary passed within `initial_delay + period × failure_threshold`. After Swarm's
//!   update, every new task is probed the same way (a restart has only this check). A failed
//!   check fails the component with `HealthCheckFailed`, and the service keeps, or is returned
//!   to, the previous version;
//! - jobs are `replicated-job` services, databases services pinned to a node with their volume;
//! - the ingress follows each service's tasks ([`slipway_swarm::follow_endpoints`]);
//! - the reconciler recreates a service that is missing, returns one that runs another image
//!   than the active deployment's to it, and removes those of components the spec dropped.
//!   Swarm itself restarts crashed tasks and keeps the replica count.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_ingress::Ingress;
use slipway_spec::{ComponentKind, Deployment, labels};
use slipway_store::AppRecord;
use slipway_swarm::{
    EndpointEvent, Follower, ServiceDef, Swarm, SwarmError, follow_endpoints, service_name,
};

use crate::{Engine, EngineError, Reconciled, templates};

/// How the engine reaches a swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmConfig {
    /// The registry every node pulls from (`host[:port]`); built images are pushed there.
    pub registry: String,
    /// How long one component's rolling update may take before the deployment fails.
    pub update_timeout: Duration,
}

impl SwarmConfig {
    pub fn new(registry: impl Into<String>) -> Self {
        SwarmConfig {
            registry: registry.into(),
            update_timeout: Duration::from_secs(600),
        }
    }
}

/// The swarm the engine drives, and the ingress's followers of its services.
#[derive(Debug)]
pub(crate) struct SwarmMode {
    pub swarm: Swarm,
    pub config: SwarmConfig,
    /// One per service component: `(app ID, component)`.
    followers: Mutex<HashMap<(String, String), Follower>>,
}

/// The registry repository a component's images are pushed to.
fn repository(app_id: &str, component: &str) -> String {
    format!("slipway/{}-{component}", slipway_swarm::short_id(app_id))
}

impl SwarmMode {
    pub(crate) fn new(swarm: Swarm, config: SwarmConfig) -> Self {
        SwarmMode {
            swarm,
            config,
            followers: Mutex::new(HashMap::new()),
        }
    }

    /// Pushes a local image for `component` of `app_id`, tagged by the image ID (so that the
    /// same image is always the same reference); returns the reference pinned by digest.
    pub(crate) async fn push(
        &self,
        image_id: &str,
        app_id: &str,
        component: &str,
    ) -> Result<String, SwarmError> {
        let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
        let tag: String = hex.chars().take(16).collect();
        slipway_swarm::push(
            self.swarm.docker(),
            image_id,
            &self.config.registry,
            &repository(app_id, component),
            &tag,
        )
        .await
    }

    /// Deletes from the registry an image [`SwarmMode::push`] pushed (`pushed` is the
    /// reference it returned); `false` when the registry no longer has it.
    pub(crate) async fn unpush(&self, pushed: &str) -> Result<bool, SwarmError> {
        slipway_swarm::unpush(self.swarm.docker(), pushed).await
    }

    /// The images the app's services run, as Swarm has them: never to be deleted from the
    /// registry, whatever the retention says.
    pub(crate) async fn images_in_use(&self, app_id: &str) -> Result<BTreeSet<String>, SwarmError> {
        let services = self.swarm.services_with_specs(Some(app_id)).await?;
        Ok(services
            .into_iter()
            .filter_map(|s| s.spec?.task_template?.container_spec?.image)
            .collect())
    }

    /// Deletes from the registry every image pushed for `components` of `app_id`; returns how
    /// many. Each component is tried, whatever the others' outcome; the first refusal is
    /// returned after.
    pub(crate) async fn unpush_app(
        &self,
        app_id: &str,
        components: impl IntoIterator<Item = &str>,
    ) -> Result<usize, SwarmError> {
        let (mut deleted, mut refused) = (0, None);
        for component in components {
            match slipway_swarm::unpush_repository(
                self.swarm.docker(),
                &self.config.registry,
                &repository(app_id, component),
            )
            .await
            {
                Ok(n) => deleted += n,
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        refused.map_or(Ok(deleted), Err)
    }

    /// The Swarm service of a service, worker or job of `d`. Fails (with the reason) when the
    /// component has no pushed image in the deployment.
    pub(crate) fn def(
        &self,
        d: &Deployment,
        component: &str,
        daemon_id: &str,
    ) -> Result<ServiceDef, String> {
        let spec = &d.spec;
        let kind = spec
            .kind_of(component)
            .ok_or_else(|| format!("{component} is not in the spec"))?;
        let (common, http_port, health_check, rollout) = match kind {
            ComponentKind::Service => {
                let s = spec.service(component).ok_or("no such service")?;
                (
                    s.common(),
                    Some(s.http_port.unwrap_or(8080)),
                    s.health_check.clone(),
                    s.rollout.clone(),
                )
            }
            ComponentKind::Worker => {
                let w = spec.worker(component).ok_or("no such worker")?;
                (w.common(), None, None, w.rollout.clone())
            }
            ComponentKind::Job => {
                let j = spec
                    .jobs
                    .iter()
                    .find(|j| j.name == component)
                    .ok_or("no such job")?;
                (j.common(), None, None, None)
            }
            ComponentKind::Database => {
                return Err(format!("{component} is a database"));
            }
        };
        let image = d
            .component(component)
            .and_then(|c| c.image.as_ref())
            .and_then(|i| i.pushed.clone())
            .ok_or_else(|| {
                format!("{component} has no image pushed to the registry in this deployment")
            })?;
        let replicas = if kind == ComponentKind::Job {
            1
        } else {
            templates::instance_count(spec, component)
        };
        Ok(ServiceDef {
            daemon_id: daemon_id.to_string(),
            app_id: d.app_id.clone(),
            component: component.to_string(),
            kind: Some(kind),
            deployment_id: d.id.clone(),
            image,
            env: spec.run_envs(common),
            run_command: common.run_command.map(str::to_string),
            replicas,
            http_port,
            health_check,
            rollout,
            termination: common.termination.cloned(),
            network: Some(slipway_swarm::network_name(&d.app_id)),
            volume: None,
            pin_node: None,
        })
    }

    /// Keeps the ingress's pool of a service component in step with its tasks: a task joins
    /// once it runs and answers its health check, and is drained (at most `drain`) as soon as
    /// Swarm wants it stopped. Does nothing when the component is already followed.
    pub(crate) fn follow(
        &self,
        ingress: &Arc<Ingress>,
        app_id: &str,
        component: &str,
        port: u16,
        http_path: Option<String>,
        drain: Duration,
    ) {
        let key = (app_id.to_string(), component.to_string());
        let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        if followers.contains_key(&key) {
            return;
        }
        let ingress = Arc::clone(ingress);
        let (app, comp) = key.clone();
        let follower = follow_endpoints(
            self.swarm.clone(),
            slipway_swarm::service_name(app_id, component),
            port,
            http_path,
            move |event| match event {
                EndpointEvent::Ready { task_id, addr } => {
                    tracing::debug!(app = %app, component = %comp, task = %task_id, %addr, "a task joins the ingress");
                    ingress.add(&app, &comp, &task_id, addr);
                }
                EndpointEvent::Leaving { task_id } => {
                    let (ingress, app, comp) = (Arc::clone(&ingress), app.clone(), comp.clone());
                    tokio::spawn(async move {
                        ingress.drain(&app, &comp, &task_id, drain).await;
                    });
                }
            },
        );
        followers.insert(key, follower);
    }

    /// Stops following one component, or every component of an app with `None`.
    pub(crate) fn unfollow(&self, app_id: &str, component: Option<&str>) {
        self.followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(app, comp), _| app != app_id || component.is_some_and(|c| c != comp));
    }

    /// Stops following everything.
    pub(crate) fn unfollow_all(&self) {
        self.followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Engine {
    /// The RUN log of an app on a swarm: what the tasks of its services and workers write, on
    /// every node, each line prefixed with its component, merged in time order as it is read
    /// (with `follow`, as it comes), as chunks of whole lines.
    pub(crate) async fn run_logs_on_swarm(
        &self,
        mode: &SwarmMode,
        app_id: &str,
        component: Option<&str>,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<futures::stream::BoxStream<'static, String>, EngineError> {
        use futures::StreamExt;
        let record = self.app(app_id).await?;
        let running: Vec<String> = mode.swarm.services(Some(&record.id)).await?;
        let components: Vec<String> = record
            .spec
            .components()
            .into_iter()
            .filter(|(_, kind)| kind.is_restartable())
            .map(|(name, _)| name.to_string())
            .filter(|name| component.is_none_or(|want| want == name))
            .filter(|name| running.contains(&service_name(&record.id, name)))
            .collect();
        let streams: Vec<_> = components
            .iter()
            .map(|c| {
                let c = c.clone();
                mode.swarm
                    .log_lines(&service_name(&record.id, &c), follow, tail)
                    .map(move |(at, line)| (at, format!("{c} {line}")))
            })
            .collect();
        if follow {
            // Each follower has Docker's stream of its own, read only as fast as its
            // connection takes it (nothing is queued for it here).
            let lines = futures::stream::select_all(streams).map(|(_, line)| line);
            return Ok(crate::runlog::chunked(lines.boxed()));
        }
        let streams = streams.into_iter().map(StreamExt::boxed).collect();
        Ok(crate::runlog::chunked(crate::runlog::merge_by_time(
            streams,
        )))
    }

    /// Converges an app's Swarm services to its active deployment: a service that is missing
    /// is created, one that runs another image or replica count than the active deployment's
    /// is updated back to it (Swarm rolls it), and the services of components the spec no
    /// longer has (or of every service and worker, when nothing is active) are removed.
    /// Databases are left alone unless their component is gone from the spec. The ingress
    /// follows every service.
    pub(crate) async fn reconcile_on_swarm(
        &self,
        mode: &SwarmMode,
        record: &AppRecord,
        active: Option<&Deployment>,
    ) -> Result<Reconciled, EngineError> {
        let daemon = self.inner.config.daemon_id.as_str();
        let mut done = Reconciled::default();
        let mut wanted: HashMap<String, ServiceDef> = HashMap::new();
        if let Some(d) = active {
            let names = d
                .spec
                .services
                .iter()
                .map(|s| &s.name)
                .chain(d.spec.workers.iter().map(|w| &w.name));
            for name in names {
                match mode.def(d, name, daemon) {
                    Ok(def) => {
                        wanted.insert(service_name(&record.id, name), def);
                    }
                    Err(reason) => {
                        tracing::warn!(app = %record.name, component = %name, %reason, "cannot converge the component");
                    }
                }
            }
        }
        // Every service of the app, read once.
        let mut running: HashMap<String, bollard::models::ServiceSpec> = HashMap::new();
        for service in mode.swarm.services_with_specs(Some(&record.id)).await? {
            if let Some(spec) = service.spec
                && let Some(name) = spec.name.clone()
            {
                running.insert(name, spec);
            }
        }
        for (name, spec) in &running {
            if wanted.contains_key(name) {
                continue;
            }
            let service_labels = spec.labels.clone().unwrap_or_default();
            let component = service_labels
                .get(labels::COMPONENT)
                .cloned()
                .unwrap_or_default();
            let is_database = service_labels.get(labels::KIND).map(String::as_str)
                == Some(ComponentKind::Database.as_str());
            if is_database
                && active.is_some_and(|d| d.spec.databases.iter().any(|db| db.name == component))
            {
                continue;
            }
            tracing::info!(app = %record.name, service = %name, "removing a service the active deployment does not have");
            mode.unfollow(&record.id, Some(&component));
            mode.swarm.remove(name).await?;
            done.removed += 1;
        }
        let Some(d) = active else {
            return Ok(done);
        };
        for (name, def) in &wanted {
            let runs = running.get(name).map(|spec| {
                let image = spec
                    .task_template
                    .as_ref()
                    .and_then(|t| t.container_spec.as_ref())
                    .and_then(|c| c.image.clone());
                let replicas = spec
                    .mode
                    .as_ref()
                    .and_then(|m| m.replicated.as_ref())
                    .and_then(|r| r.replicas);
                (image, replicas)
            });
            let want = (Some(def.image.clone()), Some(i64::from(def.replicas)));
            if runs.as_ref() != Some(&want) {
                tracing::info!(app = %record.name, service = %name, found = ?runs, "converging the service to the active deployment");
                mode.swarm.apply(def).await?;
                done.started += 1;
            }
            if def.http_port.is_some() {
                self.follow_service(mode, &record.id, &d.spec, &def.component);
            }
        }
        Ok(done)
    }
}
