//! The reconciler: converges what runs to the active deployment of each app.
//!
//! It runs at start-up (after interrupted deployments are settled), on a timer, and after each
//! deployment. For every service and worker of the active deployment it keeps
//! `instance_count` running instances of the deployment's image (preferring those the active
//! deployment started), starts what is missing, and removes what is crashed, surplus or of
//! another image; databases that stopped are started again and removed ones recreated (their
//! volume is kept); containers of components the spec no longer has are removed. It only ever
//! touches containers that carry the daemon's labels, and it never runs while a deployment of
//! the same app runs.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use slipway_rollout::{Bounds, ComponentPlan, Event, Instance, Observer, Runtime, roll};
use slipway_spec::{ComponentKind, Deployment, labels};

use crate::{Engine, EngineError, templates};

/// What to do with one component's containers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Convergence {
    pub keep: Vec<String>,
    pub remove: Vec<String>,
    pub start: u32,
}

/// Decides, from what runs, which containers of a component to keep and remove and how many to
/// start. Pure: tested without Docker.
pub(crate) fn converge(
    image: &str,
    count: u32,
    preferred_deployment: &str,
    observed: &[Instance],
) -> Convergence {
    let mut candidates: Vec<&Instance> = observed
        .iter()
        .filter(|i| i.running && i.image == image)
        .collect();
    // Instances of the active deployment first, then by name for a stable choice.
    candidates.sort_by_key(|i| (i.deployment_id != preferred_deployment, i.name.clone()));
    let keep: Vec<String> = candidates
        .iter()
        .take(count as usize)
        .map(|i| i.id.clone())
        .collect();
    let remove = observed
        .iter()
        .filter(|i| !keep.contains(&i.id))
        .map(|i| i.id.clone())
        .collect();
    Convergence {
        start: count.saturating_sub(keep.len() as u32),
        keep,
        remove,
    }
}

/// What one pass changed, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub started: usize,
    pub removed: usize,
}

/// Adds instances the reconciler starts to the ingress, and drains those it removes.
struct PoolObserver {
    engine: Engine,
    app_id: String,
    component: String,
    http_port: Option<u16>,
}

impl Observer for PoolObserver {
    fn event(&self, event: Event) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Event::Ready { instance, .. } = event
                && let Some(addr) = self.http_port.and_then(|p| instance.address(p))
            {
                self.engine
                    .inner
                    .ingress
                    .add(&self.app_id, &self.component, &instance.id, addr);
            }
        })
    }

    fn drain<'a>(&'a self, instance: &'a Instance, max: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.engine
                .inner
                .ingress
                .drain(&self.app_id, &self.component, &instance.id, max)
                .await;
        })
    }
}

impl Engine {
    /// Converges one app to its active deployment. Returns `None` when a deployment of the app
    /// runs (it converges the app itself).
    pub async fn reconcile(&self, app_id: &str) -> Result<Option<Reconciled>, EngineError> {
        let slot = self.slot(app_id);
        let Ok(_turn) = slot.turn.try_lock() else {
            return Ok(None);
        };
        self.reconcile_locked(app_id).await.map(Some)
    }

    pub(crate) async fn reconcile_locked(&self, app_id: &str) -> Result<Reconciled, EngineError> {
        let inner = &self.inner;
        let daemon = inner.config.daemon_id.as_str();
        let record = self.app(app_id).await?;
        let active = inner
            .store
            .active_deployment(&record.id)
            .await?
            .map(|d| self.opened(&d))
            .transpose()?;
        if let Some(mode) = &inner.swarm {
            return self
                .reconcile_on_swarm(mode, &record, active.as_ref())
                .await;
        }
        let observed = inner
            .runtime
            .list(&[(labels::APP, record.id.as_str()), (labels::DAEMON, daemon)])
            .await?;
        let mut done = Reconciled::default();
        let Some(active) = active else {
            // Nothing is active: no service or worker may run.
            for i in &observed {
                if matches!(
                    record.spec.kind_of(&i.component),
                    Some(ComponentKind::Service | ComponentKind::Worker) | None
                ) {
                    self.remove_instance(&record.id, i).await;
                    done.removed += 1;
                }
            }
            return Ok(done);
        };
        let net_labels = {
            let mut l = templates::daemon_labels(daemon, &record.id);
            l.insert(labels::COMPONENT.into(), String::new());
            l.insert(labels::DEPLOYMENT.into(), active.id.clone());
            l
        };
        inner
            .runtime
            .ensure_network(&templates::network_name(&record.id), &net_labels)
            .await?;
        self.reconcile_databases(&record.name, &active).await?;

        let spec = &active.spec;
        for i in observed
            .iter()
            .filter(|i| spec.kind_of(&i.component).is_none())
        {
            tracing::info!(instance = %i.name, "removing a container of a component the spec no longer has");
            self.remove_instance(&record.id, i).await;
            done.removed += 1;
        }
        let rolled: Vec<String> = spec
            .services
            .iter()
            .map(|s| s.name.clone())
            .chain(spec.workers.iter().map(|w| w.name.clone()))
            .collect();
        for component in rolled {
            let Some(template) =
                templates::instance_spec(&record.name, &active, &component, daemon)
            else {
                continue;
            };
            let mine: Vec<Instance> = observed
                .iter()
                .filter(|i| i.component == component)
                .cloned()
                .collect();
            let count = templates::instance_count(spec, &component);
            let plan = converge(&template.image, count, &active.id, &mine);
            let http_port = spec
                .service(&component)
                .map(|s| s.http_port.unwrap_or(8080));
            if plan.start > 0 {
                tracing::info!(component = %component, start = plan.start, "starting missing instances");
                let has_healthcheck = spec
                    .service(&component)
                    .is_some_and(|s| s.health_check.is_none())
                    && inner
                        .runtime
                        .image_has_healthcheck(&template.image)
                        .await
                        .unwrap_or(false);
                let (drain, grace) = templates::termination(spec, &component);
                let component_plan = ComponentPlan {
                    component: component.clone(),
                    bounds: Bounds::new(plan.start, 1, 0),
                    old: Vec::new(),
                    template,
                    readiness: templates::readiness(
                        spec,
                        &component,
                        has_healthcheck,
                        inner.config.worker_min_ready,
                    ),
                    drain,
                    grace,
                };
                let observer = Arc::new(PoolObserver {
                    engine: self.clone(),
                    app_id: record.id.clone(),
                    component: component.clone(),
                    http_port,
                });
                match roll(
                    &inner.runtime,
                    component_plan,
                    observer,
                    &inner.shutdown.child_token(),
                )
                .await
                {
                    Ok(started) => done.started += started.len(),
                    Err(e) => {
                        tracing::warn!(component = %component, error = %e, "an instance the reconciler started did not become ready")
                    }
                }
            }
            for id in &plan.remove {
                if let Some(i) = mine.iter().find(|i| &i.id == id) {
                    tracing::info!(instance = %i.name, running = i.running, "removing an instance that is crashed, surplus or of another version");
                    let (drain, grace) = templates::termination(spec, &component);
                    inner
                        .ingress
                        .drain(&record.id, &component, &i.id, drain)
                        .await;
                    if let Err(e) = inner.runtime.stop(i, grace).await {
                        tracing::warn!(instance = %i.name, error = %e, "removing an instance failed");
                    }
                    done.removed += 1;
                }
            }
            // Instances that run but are not in the pool (after a restart of the daemon).
            if let Some(port) = http_port {
                for i in mine.iter().filter(|i| plan.keep.contains(&i.id)) {
                    if let Some(addr) = i.address(port) {
                        inner.ingress.add(&record.id, &component, &i.id, addr);
                    }
                }
            }
        }
        if done != Reconciled::default() {
            tracing::info!(app = %record.name, started = done.started, removed = done.removed, "reconciled");
        }
        Ok(done)
    }

    async fn reconcile_databases(
        &self,
        app_name: &str,
        active: &Deployment,
    ) -> Result<(), EngineError> {
        for db in &active.spec.databases {
            let Some((reference, data_dir)) = db.image_and_data_dir() else {
                continue;
            };
            let Ok(image) = self.inner.builder.resolve(&reference).await else {
                tracing::warn!(database = %db.name, "its image is not available; it cannot be started");
                continue;
            };
            let spec = slipway_rollout::InstanceSpec {
                app_id: active.app_id.clone(),
                app_name: app_name.to_string(),
                component: db.name.clone(),
                kind: Some(ComponentKind::Database),
                deployment_id: active.id.clone(),
                image,
                env: db
                    .envs
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                    .collect(),
                run_command: None,
                ports: Vec::new(),
                network: Some(templates::network_name(&active.app_id)),
                labels: templates::daemon_labels(&self.inner.config.daemon_id, &active.app_id),
            };
            let volume = templates::volume_name(&active.app_id, &db.name);
            self.inner
                .runtime
                .ensure_database(&spec, &volume, &data_dir)
                .await?;
        }
        Ok(())
    }

    async fn remove_instance(&self, app_id: &str, i: &Instance) {
        self.inner.ingress.eject(&i.id);
        let _ = app_id;
        if let Err(e) = self.inner.runtime.stop(i, Duration::from_secs(10)).await {
            tracing::warn!(instance = %i.name, error = %e, "removing a container failed");
        }
    }

    /// Reconciles every app, one after another.
    pub async fn reconcile_all(&self) {
        let Ok((apps, _)) = self.inner.store.apps(0, u64::MAX >> 1).await else {
            return;
        };
        for app in apps {
            if let Err(e) = self.reconcile(&app.id).await {
                tracing::warn!(app = %app.name, error = %e, "reconciling failed");
            }
        }
    }

    /// Reconciles every app every `interval` until the engine shuts down.
    pub(crate) async fn reconcile_forever(&self, interval: Duration) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            self.reconcile_all().await;
        }
    }
}

/// Whether the new version of an interrupted deployment had proven itself: every new
/// instance of every component it rolled out had passed its readiness check.
pub(crate) fn proven(d: &Deployment) -> bool {
    let Some(deploy) = d.progress.steps.iter().find(|s| s.name == "deploy") else {
        return false;
    };
    let rollouts: Vec<_> = deploy
        .steps
        .iter()
        .filter(|s| !s.steps.is_empty())
        .collect();
    !rollouts.is_empty()
        && rollouts.iter().all(|c| {
            c.steps
                .iter()
                .all(|i| i.status == slipway_spec::StepStatus::Success)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, image: &str, dep: &str, running: bool) -> Instance {
        Instance {
            id: id.into(),
            name: id.into(),
            image: image.into(),
            deployment_id: dep.into(),
            running,
            ..Instance::default()
        }
    }

    #[test]
    fn keeps_the_active_deployments_instances_and_replaces_the_rest() {
        let observed = [
            inst("a", "img2", "old", true),
            inst("b", "img2", "new", true),
            inst("c", "img1", "older", true),
            inst("d", "img2", "new", false),
        ];
        let plan = converge("img2", 2, "new", &observed);
        assert_eq!(
            plan.keep,
            ["b", "a"],
            "the active deployment's first, then the same image"
        );
        assert_eq!(
            plan.remove,
            ["c", "d"],
            "another image and a crashed one go"
        );
        assert_eq!(plan.start, 0);

        let plan = converge("img2", 3, "new", &observed);
        assert_eq!(plan.start, 1);

        let plan = converge("img2", 1, "new", &observed);
        assert_eq!(plan.keep, ["b"]);
        assert_eq!(plan.remove, ["a", "c", "d"], "surplus instances go");

        let plan = converge("img3", 2, "new", &[]);
        assert_eq!(
            plan,
            Convergence {
                keep: vec![],
                remove: vec![],
                start: 2
            }
        );
    }
}
