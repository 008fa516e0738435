//! Running one deployment through its phases.

mod drive;
pub(crate) use drive::{Settled, settle_interrupted};
#[cfg(test)]
mod faults;
mod on_swarm;
mod swarm_gate;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use slipway_build::BuildSpec;
use slipway_rollout::{ComponentPlan, Event, Instance, InstanceSpec, Observer, RolloutError, roll};
use slipway_spec::{
    ComponentImage, ComponentKind, ComponentRef, Deployment, DeploymentComponent, DeploymentKind,
    EnvType, FailureCode, JobKind, Phase, Source, Step, StepStatus, error_chain, labels, now,
};
use slipway_store::LogKind;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Engine;
use crate::lifecycle::{self, Control};
use crate::templates::{self, daemon_labels};

/// The most bytes of one component's build output a deployment's BUILD log keeps (its first
/// ones): the store is not a place for a build that prints without end.
const BUILD_LOG_BYTES: usize = 16 << 20;

/// The most lines of build output waiting to be saved; a build that writes faster than the
/// store saves has the lines beyond dropped, and counted in a line of the log.
const BUILD_LOG_QUEUE: usize = 8192;

/// Why a deployment stopped: where in the step tree, a code and one sentence.
#[derive(Debug)]
pub(crate) struct Failure {
    pub path: Vec<String>,
    pub code: FailureCode,
    pub message: String,
}

impl Failure {
    pub fn new(path: &[&str], code: FailureCode, message: impl Into<String>) -> Self {
        Failure {
            path: path.iter().map(|s| s.to_string()).collect(),
            code,
            message: message.into(),
        }
    }

    pub fn canceled(path: &[&str]) -> Self {
        Failure::new(path, FailureCode::Canceled, "the deployment was canceled")
    }

    /// The store did not take the deployment's move to `phase`.
    pub fn store(phase: Phase, why: &str) -> Self {
        Failure::new(
            &[],
            FailureCode::StoreFailed,
            format!("the store did not save the deployment as {phase}: {why}"),
        )
    }
}

/// `step`'s own code, unless what failed under it says more: Docker out of reach, a timeout,
/// a cancel.
fn narrowed(step: FailureCode, cause: FailureCode) -> FailureCode {
    match cause {
        FailureCode::RuntimeUnreachable | FailureCode::Timeout | FailureCode::Canceled => cause,
        _ => step,
    }
}

/// Waits until every deployment queued before `ticket` has had its turn, then takes the turn.
/// The turn passes on when the returned [`NextInLine`] is dropped (after the guard).
async fn wait_in_line(
    slot: &Arc<crate::AppSlot>,
    ticket: u64,
) -> (NextInLine, tokio::sync::MutexGuard<'_, ()>) {
    let next = NextInLine {
        slot: Arc::clone(slot),
        ticket,
    };
    let mut serving = slot.serving.subscribe();
    let _ = serving.wait_for(|&now| now >= ticket).await;
    (next, slot.turn.lock().await)
}

/// Gives the turn to the next deployment in line when a deployment's task ends, however it
/// ends.
struct NextInLine {
    slot: Arc<crate::AppSlot>,
    ticket: u64,
}

impl Drop for NextInLine {
    fn drop(&mut self) {
        let next = self.ticket + 1;
        self.slot.serving.send_modify(|now| *now = (*now).max(next));
    }
}

/// One deployment being run: the engine, the deployment (saved on every change), the version
/// it replaces, and its cancel.
struct Run {
    engine: Engine,
    app_name: String,
    dep: Mutex<Deployment>,
    /// The active deployment when this one started (its SECRET values opened).
    previous: std::sync::OnceLock<Option<Deployment>>,
    cancel: CancellationToken,
}

/// Runs a deployment when its app's turn comes: after every deployment queued before it
/// (`ticket` says where it is in the line).
pub(crate) async fn execute(
    engine: Engine,
    app_id: String,
    id: String,
    ticket: u64,
    control: Arc<Control>,
) {
    let slot = engine.slot(&app_id);
    let (_next, turn) = wait_in_line(&slot, ticket).await;
    let span = tracing::info_span!("deployment", deployment.id = %id, app = %app_id);
    let cancel = control.token().clone();
    let result = async {
        let started = control.start().await;
        let Some(d) = engine.inner.store.deployment(&app_id, &id).await? else {
            return Ok::<(), crate::EngineError>(());
        };
        if d.phase.is_terminal() {
            // Canceled while it waited.
            return Ok(());
        }
        if !started {
            // The engine is stopping: it never ran.
            let mut d = d;
            d.progress.push(&[], Step::new("canceled"));
            d.progress.fail(
                &["canceled"],
                now(),
                FailureCode::Canceled.as_str(),
                "canceled before it started",
            );
            if let Ok(to) = lifecycle::next(d.phase, lifecycle::Event::Cancel) {
                d.set_phase(to);
                engine.inner.store.save_deployment(&d).await?;
                engine.announce(d);
            }
            return Ok(());
        }
        if let Some(newer) = newer_waiting(&engine, &d).await? {
            let mut d = d;
            d.progress.push(
                &[],
                Step::new("superseded").message(format!(
                    "superseded by deployment {newer}, queued after it before it could start"
                )),
            );
            d.progress.succeed(&["superseded"], now());
            if let Ok(to) = lifecycle::next(d.phase, lifecycle::Event::Supersede) {
                d.set_phase(to);
                engine.inner.store.save_deployment(&d).await?;
                engine.announce(d);
            }
            return Ok(());
        }
        let app_name = engine
            .inner
            .store
            .app(&app_id)
            .await?
            .map_or_else(|| d.spec.name.clone(), |a| a.name);
        *slot.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.clone());
        let run = Arc::new(Run {
            engine: engine.clone(),
            app_name,
            dep: Mutex::new(d),
            previous: std::sync::OnceLock::new(),
            cancel: cancel.clone(),
        });
        drive::drive(&run, &control).await;
        Ok(())
    }
    .instrument(span)
    .await;
    if let Err(e) = result {
        tracing::error!(deployment.id = %id, error = %error_chain(&e), "deployment could not run");
    }
    control.end().await;
    *slot.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    slot.controls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    // Converge what runs to the active deployment before the next deployment's turn.
    if !cancel.is_cancelled()
        && let Err(e) = engine.reconcile_locked(&app_id).await
    {
        tracing::warn!(app = %app_id, error = %error_chain(&e), "reconciling after the deployment failed");
    }
    drop(turn);
}

/// A deployment of the same app that was queued after `d` and still waits: only the newest
/// waiting deployment runs.
async fn newer_waiting(
    engine: &Engine,
    d: &Deployment,
) -> Result<Option<String>, crate::EngineError> {
    let (recent, _) = engine.inner.store.deployments(&d.app_id, 0, 50).await?;
    Ok(recent
        .into_iter()
        .take_while(|other| other.id != d.id)
        .find(|other| matches!(other.phase, Phase::PendingBuild | Phase::PendingDeploy))
        .map(|other| other.id))
}

/// What a completed rollout changed, for returning to the previous version.
enum Rolled {
    /// Each component's plan and its new instances.
    Docker(Vec<(ComponentPlan, Vec<Instance>)>),
    /// Each component's service definition, and whether it was a restart (the same version).
    Swarm(Vec<slipway_swarm::ServiceDef>, bool),
}

impl drive::Steps for Arc<Run> {
    type Rolled = Rolled;

    fn snapshot(&self) -> BoxFuture<'_, Deployment> {
        Box::pin(async move { self.dep.lock().await.clone() })
    }

    fn write<'a>(
        &'a self,
        change: drive::Change<'a>,
        keep: bool,
    ) -> BoxFuture<'a, Result<(), drive::StoreFault>> {
        Box::pin(async move {
            let mut d = self.dep.lock().await;
            let mut next = d.clone();
            change(&mut next);
            next.touch();
            match self.engine.inner.store.save_deployment(&next).await {
                Ok(()) => {
                    *d = next;
                    self.engine.announce(d.clone());
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(deployment.id = %d.id, error = %error_chain(&e), "saving the deployment failed");
                    if keep {
                        *d = next;
                    }
                    Err(drive::StoreFault::from_error(&e))
                }
            }
        })
    }

    fn activate(&self) -> BoxFuture<'_, Result<(), drive::StoreFault>> {
        Box::pin(async move {
            let mut d = self.dep.lock().await;
            let mut next = d.clone();
            next.progress.succeed_finished(now());
            let to = lifecycle::next(next.phase, lifecycle::Event::Activate)
                .map_err(|r| drive::StoreFault(r.to_string()))?;
            next.set_phase(to);
            let superseded = self
                .engine
                .inner
                .store
                .activate(&next)
                .await
                .map_err(|e| drive::StoreFault::from_error(&e))?;
            *d = next;
            tracing::info!(deployment.id = %d.id, superseded = ?superseded, "deployment active");
            // Both were written in one transaction; the one it replaces is told first, so that
            // a watcher that stops at the new one's end has seen both.
            if let Some(old) = superseded
                && let Ok(Some(old)) = self.engine.inner.store.deployment(&d.app_id, &old).await
            {
                self.engine.announce(old);
            }
            self.engine.announce(d.clone());
            Ok(())
        })
    }

    fn begin(&self) -> BoxFuture<'_, Result<(), Failure>> {
        Box::pin(async move {
            let d = self.snapshot().await;
            let previous = self
                .engine
                .inner
                .store
                .active_deployment(&d.app_id)
                .await
                .map_err(|e| Failure::new(&[], FailureCode::StoreFailed, error_chain(&e)))?
                .filter(|p| p.id != d.id)
                .map(|p| self.engine.opened(&p))
                .transpose()
                .map_err(|e| Failure::new(&[], FailureCode::SecretUnreadable, error_chain(&e)))?;
            let _ = self.previous.set(previous);
            let steps = step_tree(&d);
            self.update(|d| d.progress = slipway_spec::Progress::new(steps))
                .await;
            Ok(())
        })
    }

    fn build(&self) -> BoxFuture<'_, Result<(), Failure>> {
        Box::pin(self.build_all())
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), Failure>> {
        Box::pin(self.prepare_deploy())
    }

    fn roll_out(&self) -> BoxFuture<'_, Result<Rolled, Failure>> {
        Box::pin(self.roll_out_all())
    }

    fn undo(&self, rolled: Rolled) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.undo_rollout(rolled))
    }

    fn post_deploy(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let kind = self.dep.lock().await.kind;
            self.update(|d| d.progress.succeed(&["deploy"], now()))
                .await;
            if kind != DeploymentKind::Build {
                return;
            }
            if let Err(f) = self.run_jobs(JobKind::PostDeploy, "post-deploy").await {
                // The new version runs and stays: a POST_DEPLOY job's failure is reported, not
                // rolled back.
                tracing::warn!(message = %f.message, "post-deploy job failed");
                self.update(|d| {
                    let path: Vec<&str> = f.path.iter().map(String::as_str).collect();
                    d.progress.fail(&path, now(), f.code.as_str(), &f.message);
                })
                .await;
            }
        })
    }

    fn failed_deploy(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.run_jobs(JobKind::FailedDeploy, "failed-deploy")
                .await
                .ok();
        })
    }

    fn settled(&self, active: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let d = self.snapshot().await;
            if active {
                self.engine.inner.ingress.set_app(&d.app_id, &d.spec);
                self.engine.refresh_domains();
            }
            // A failed deployment's image counts towards the retention as any other: the
            // images it pushed out of it go now, not at the next success.
            self.prune_images(&d.app_id).await;
        })
    }

    fn backoff(&self, attempt: u32) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep(drive::backoff_delay(attempt)) => true,
                () = self.engine.inner.shutdown.cancelled() => false,
            }
        })
    }
}

impl Run {
    fn daemon_id(&self) -> &str {
        &self.engine.inner.config.daemon_id
    }

    fn previous(&self) -> Option<&Deployment> {
        self.previous.get().and_then(Option::as_ref)
    }

    /// Changes the deployment's steps, saves it and tells the watchers; a change the store
    /// did not take is told with the next one it takes.
    async fn update(self: &Arc<Self>, f: impl FnOnce(&mut Deployment) + Send) {
        let _ = drive::Steps::write(self, Box::new(f), true).await;
    }

    async fn snapshot(&self) -> Deployment {
        self.dep.lock().await.clone()
    }

    /// The deployment with its SECRET values opened, for building and starting containers.
    async fn opened(&self) -> Result<Deployment, Failure> {
        let d = self.snapshot().await;
        self.engine
            .opened(&d)
            .map_err(|e| Failure::new(&[], FailureCode::SecretUnreadable, error_chain(&e)))
    }

    async fn start_step(self: &Arc<Self>, path: &[&str]) {
        self.update(|d| d.progress.start(path, now())).await;
    }

    async fn log(&self, kind: LogKind, component: &str, lines: Vec<String>) {
        let id = self.dep.lock().await.id.clone();
        if let Err(e) = self
            .engine
            .inner
            .store
            .append_log(&id, kind, component, lines)
            .await
        {
            tracing::warn!(error = %error_chain(&e), "saving log lines failed");
        }
    }

    /// Removes the app's built images beyond the most recent `image_retention` of each
    /// component (whatever the deployments that built them became); the active deployment's
    /// images and an image a container still uses are never removed.
    async fn prune_images(&self, app_id: &str) {
        let inner = &self.engine.inner;
        let keep_per_component = inner.config.image_retention.max(1);
        let Ok((recent, _)) = inner.store.deployments(app_id, 0, 200).await else {
            return;
        };
        let Ok(active) = inner.store.active_deployment(app_id).await else {
            return;
        };
        let active: BTreeSet<String> = active
            .iter()
            .flat_map(|d| d.services.iter().chain(&d.workers).chain(&d.jobs))
            .filter_map(|c| c.image.as_ref().map(|i| i.id.clone()))
            .collect();
        let mut kept: HashMap<String, Vec<String>> = HashMap::new();
        // On a swarm: where each image was pushed, to delete it there too.
        let mut pushed: HashMap<String, BTreeSet<String>> = HashMap::new();
        for d in &recent {
            for c in d.services.iter().chain(&d.workers).chain(&d.jobs) {
                let Some(image) = &c.image else { continue };
                let list = kept.entry(c.name.clone()).or_default();
                if !list.contains(&image.id) && list.len() < keep_per_component {
                    list.push(image.id.clone());
                }
                if let Some(reference) = &image.pushed {
                    pushed
                        .entry(image.id.clone())
                        .or_default()
                        .insert(reference.clone());
                }
            }
        }
        let mut images = Vec::new();
        for filter in templates::image_filters(self.daemon_id(), app_id) {
            let Ok(list) = inner.builder.list_labelled(&filter).await else {
                return;
            };
            images.extend(list);
        }
        // On a swarm, what its services run stays in the registry whatever the retention
        // says; when Swarm cannot tell, everything stays there.
        let in_use = match &inner.swarm {
            Some(mode) => match mode.images_in_use(app_id).await {
                Ok(in_use) => Some(in_use),
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "old images stay in the registry: the app's services could not be read");
                    None
                }
            },
            None => None,
        };
        for (id, image_labels) in images {
            let component = templates::image_component(&image_labels);
            if active.contains(&id) || kept.get(&component).is_some_and(|k| k.contains(&id)) {
                continue;
            }
            let pushed = pushed.get(&id).into_iter().flatten();
            // The tag the push put on the image: an image with two names is only removed by
            // each name.
            for reference in pushed.clone() {
                let tagged = reference.split('@').next().unwrap_or(reference);
                if let Err(e) = inner.builder.remove_image(tagged).await {
                    tracing::warn!(image = %tagged, error = %error_chain(&e), "untagging an old image failed");
                }
            }
            match inner.builder.remove_image(&id).await {
                Ok(true) => {
                    tracing::info!(image = %id, component = %component, "removed an old image")
                }
                // Still used by a container: it stays.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(image = %id, error = %error_chain(&e), "removing an old image failed")
                }
            }
            let (Some(mode), Some(in_use)) = (&inner.swarm, &in_use) else {
                continue;
            };
            for reference in pushed.filter(|r| !in_use.contains(*r)) {
                match mode.unpush(reference).await {
                    Ok(true) => {
                        tracing::info!(image = %reference, "removed an old image from the registry")
                    }
                    Ok(false) => {
                        tracing::debug!(image = %reference, "an old image was no longer in the registry")
                    }
                    Err(e) => tracing::warn!(
                        image = %reference,
                        error = %error_chain(&e),
                        "removing an old image from the registry failed"
                    ),
                }
            }
        }
    }

    // ---- build ----

    /// Builds (or reuses) every buildable component's image, concurrently.
    async fn build_all(self: &Arc<Self>) -> Result<(), Failure> {
        let previous = self.previous();
        self.start_step(&["build"]).await;
        let d = self.opened().await?;
        let builds = d
            .spec
            .buildable()
            .into_iter()
            .map(|(kind, c)| self.build_component(kind, c, previous, &d));
        let results = join_all(builds).await;
        let mut first_error = None;
        let mut built = Vec::new();
        for r in results {
            match r {
                Ok(c) => built.push(c),
                Err(f) => {
                    first_error.get_or_insert(f);
                }
            }
        }
        if let Some(f) = first_error {
            return Err(f);
        }
        self.update(|d| {
            for (kind, component) in built {
                match kind {
                    ComponentKind::Service => d.services.push(component),
                    ComponentKind::Worker => d.workers.push(component),
                    ComponentKind::Job => d.jobs.push(component),
                    ComponentKind::Database => {}
                }
            }
            d.progress.succeed(&["build"], now());
        })
        .await;
        Ok(())
    }

    /// Builds (or reuses) a component's image; on a swarm, also pushes it to the registry.
    async fn build_component(
        self: &Arc<Self>,
        kind: ComponentKind,
        c: ComponentRef<'_>,
        previous: Option<&Deployment>,
        d: &Deployment,
    ) -> Result<(ComponentKind, DeploymentComponent), Failure> {
        let (kind, mut built) = self.build_locally(kind, c, previous, d).await?;
        let Some(mode) = &self.engine.inner.swarm else {
            return Ok((kind, built));
        };
        let Some(image) = built.image.as_mut() else {
            return Ok((kind, built));
        };
        if image.pushed.is_none() {
            let pushed = mode
                .push(&image.id, &d.app_id, c.name)
                .await
                .map_err(|e| Failure::new(&["build", c.name], e.code(), error_chain(&e)))?;
            image.pushed = Some(pushed);
        }
        let pushed = image.pushed.clone().unwrap_or_default();
        self.log(
            LogKind::Build,
            c.name,
            vec![format!("the image is in the registry as {pushed}")],
        )
        .await;
        Ok((kind, built))
    }

    async fn build_locally(
        self: &Arc<Self>,
        kind: ComponentKind,
        c: ComponentRef<'_>,
        previous: Option<&Deployment>,
        d: &Deployment,
    ) -> Result<(ComponentKind, DeploymentComponent), Failure> {
        let path = ["build", c.name];
        self.start_step(&path).await;
        // Docker's and git's own words can quote a SECRET value (a failing step's command, a
        // remote's URL): no failure names one.
        let secrets: Vec<String> = d
            .spec
            .envs
            .iter()
            .chain(c.envs)
            .filter(|e| e.kind == Some(EnvType::Secret))
            .filter_map(|e| e.value.clone())
            .filter(|v| !v.is_empty())
            .collect();
        let redact = |message: String| {
            secrets
                .iter()
                .fold(message, |m, s| m.replace(s.as_str(), "[secret]"))
        };
        let fail = |code, message: String| Failure::new(&path, code, redact(message));
        let Some(source) = c.source() else {
            return Err(fail(
                FailureCode::InvalidSpec,
                format!("{} has no source", c.name),
            ));
        };
        let inner = &self.engine.inner;
        match source {
            Source::Image { reference } => {
                let id = inner
                    .builder
                    .resolve(&reference)
                    .await
                    .map_err(|e| fail(e.code(), error_chain(&e)))?;
                self.update(|d| {
                    d.progress
                        .succeed_with(&path, now(), &format!("using image {reference}"))
                })
                .await;
                Ok((
                    kind,
                    DeploymentComponent {
                        name: c.name.to_string(),
                        image: Some(ComponentImage {
                            id,
                            reference,
                            pushed: None,
                        }),
                        ..DeploymentComponent::default()
                    },
                ))
            }
            Source::Git { url, branch } => {
                // The app's own token; the operator's credentials are the source cache's,
                // each offered only within its scope.
                let credentials = slipway_source::Credentials {
                    token: d.spec.git_token(c),
                };
                let fetched = inner
                    .sources
                    .fetch_with(&url, &branch, &credentials, &self.cancel)
                    .await
                    .map_err(|e| match e {
                        slipway_source::SourceError::Canceled { .. } => Failure::canceled(&path),
                        e => fail(e.code(), error_chain(&e)),
                    })?;
                let source_dir = c.source_dir();
                let dockerfile = c.dockerfile_path();
                let args = d.spec.build_args(c);
                let key = inner.config.build_key_secret.build_key(
                    &fetched.commit,
                    &source_dir,
                    &dockerfile,
                    &args,
                );
                let short: String = fetched.commit.chars().take(7).collect();
                if !d.force_build
                    && let Some(prev) = previous.and_then(|p| p.component(c.name))
                    && prev.build_key.as_deref() == Some(key.as_str())
                    && let Some(image) = &prev.image
                    && matches!(inner.builder.image_id(&image.id).await, Ok(Some(_)))
                {
                    self.log(
                        LogKind::Build,
                        c.name,
                        vec![format!(
                            "commit {short}: nothing that goes into the build changed; previous build reused ({})",
                            image.reference
                        )],
                    )
                    .await;
                    self.update(|d| {
                        d.progress
                            .succeed_with(&path, now(), "previous build reused")
                    })
                    .await;
                    return Ok((
                        kind,
                        DeploymentComponent {
                            name: c.name.to_string(),
                            source_commit_hash: Some(fetched.commit),
                            image: Some(image.clone()),
                            build_reused: true,
                            build_key: Some(key),
                        },
                    ));
                }
                let context = inner
                    .sources
                    .context(&fetched, &source_dir, &dockerfile)
                    .await
                    .map_err(|e| fail(e.code(), error_chain(&e)))?;
                let tag = templates::image_tag(&d.app_id, c.name, &fetched.commit);
                let mut image_labels = templates::image_labels(self.daemon_id(), &d.app_id, c.name);
                image_labels.insert(labels::COMMIT.into(), fetched.commit.clone());
                image_labels.insert(labels::BUILD_KEY.into(), key.clone());
                let spec = BuildSpec {
                    tag: tag.clone(),
                    context: context.tar,
                    dockerfile: context.dockerfile,
                    build_args: args,
                    labels: image_labels,
                    no_cache: d.clear_build_cache,
                    secrets: secrets.clone(),
                };
                self.log(
                    LogKind::Build,
                    c.name,
                    vec![format!(
                        "building {tag} from commit {short} of {url} ({branch}){}",
                        if d.clear_build_cache {
                            " without the build cache"
                        } else {
                            ""
                        }
                    )],
                )
                .await;
                // Bounded on both sides: lines wait here at most BUILD_LOG_QUEUE deep (more
                // are dropped and counted), and the store keeps at most BUILD_LOG_BYTES.
                let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(BUILD_LOG_QUEUE);
                let store = inner.store.clone();
                let (dep_id, component) = (d.id.clone(), c.name.to_string());
                let writer = tokio::spawn(async move {
                    let mut batch = Vec::new();
                    while rx.recv_many(&mut batch, 256).await > 0 {
                        let lines = std::mem::take(&mut batch);
                        if let Err(e) = store
                            .append_log(&dep_id, LogKind::Build, &component, lines)
                            .await
                        {
                            tracing::warn!(error = %error_chain(&e), "saving build log failed");
                        }
                    }
                });
                let (mut kept_bytes, mut over, mut too_fast) = (0usize, 0u64, 0u64);
                let built = inner
                    .builder
                    .build(spec, &self.cancel, |line| {
                        if kept_bytes + line.len() > BUILD_LOG_BYTES {
                            over += 1;
                        } else if tx.try_send(line.to_string()).is_ok() {
                            kept_bytes += line.len();
                        } else {
                            too_fast += 1;
                        }
                    })
                    .await;
                drop(tx);
                let _ = writer.await;
                let mut dropped = Vec::new();
                if too_fast > 0 {
                    dropped.push(format!(
                        "... {too_fast} lines of the build's output not kept: it wrote them faster than they could be saved ..."
                    ));
                }
                if over > 0 {
                    dropped.push(format!(
                        "... {over} lines of the build's output not kept: the BUILD log keeps its first {} MiB ...",
                        BUILD_LOG_BYTES >> 20
                    ));
                }
                if !dropped.is_empty() {
                    self.log(LogKind::Build, c.name, dropped).await;
                }
                let built = built.map_err(|e| match e {
                    slipway_build::BuildError::Canceled { .. } => Failure::canceled(&path),
                    e => fail(e.code(), error_chain(&e)),
                })?;
                self.update(|d| {
                    d.progress.succeed_with(
                        &path,
                        now(),
                        &format!("built {tag} from commit {short}"),
                    )
                })
                .await;
                Ok((
                    kind,
                    DeploymentComponent {
                        name: c.name.to_string(),
                        source_commit_hash: Some(fetched.commit),
                        image: Some(ComponentImage {
                            id: built.id,
                            reference: tag,
                            pushed: None,
                        }),
                        build_reused: false,
                        build_key: Some(key),
                    },
                ))
            }
        }
    }

    // ---- deploy ----

    /// The network, and in a build deployment the databases and the PRE_DEPLOY jobs.
    async fn prepare_deploy(self: &Arc<Self>) -> Result<(), Failure> {
        self.start_step(&["deploy"]).await;
        let d = self.opened().await?;
        let with_jobs = d.kind == DeploymentKind::Build;
        let inner = &self.engine.inner;
        if let Some(mode) = &inner.swarm {
            if let Err(e) = mode.swarm.check_nodes(None).await {
                self.log(
                    LogKind::Deploy,
                    "",
                    vec![format!(
                        "warning: {}; Swarm runs tasks on the other nodes",
                        error_chain(&e)
                    )],
                )
                .await;
            }
            mode.swarm
                .ensure_network(&d.app_id, &d.id)
                .await
                .map_err(|e| Failure::new(&["deploy"], e.code(), error_chain(&e)))?;
        } else {
            // The network belongs to the whole app: its component label is empty.
            let mut net_labels = daemon_labels(self.daemon_id(), &d.app_id);
            net_labels.insert(labels::COMPONENT.into(), String::new());
            net_labels.insert(labels::DEPLOYMENT.into(), d.id.clone());
            inner
                .runtime
                .ensure_network(&templates::network_name(&d.app_id), &net_labels)
                .await
                .map_err(|e| Failure::new(&["deploy"], e.code(), error_chain(&e)))?;
        }
        if with_jobs {
            for db in &d.spec.databases {
                self.ensure_database(&d, db).await?;
            }
            self.run_jobs(JobKind::PreDeploy, "pre-deploy").await?;
        }
        Ok(())
    }

    /// Rolls out every service and worker; on failure they are back on the previous version.
    async fn roll_out_all(self: &Arc<Self>) -> Result<Rolled, Failure> {
        if self.cancel.is_cancelled() {
            return Err(Failure::canceled(&["deploy"]));
        }
        let d = self.opened().await?;
        let previous = self.previous();
        let components = rollout_components(&d);
        if let Some(mode) = &self.engine.inner.swarm {
            let defs = self
                .roll_all_on_swarm(mode, &d, previous, &components)
                .await?;
            Ok(Rolled::Swarm(defs, d.kind == DeploymentKind::Restart))
        } else {
            Ok(Rolled::Docker(
                self.roll_all(&d, previous, &components).await?,
            ))
        }
    }

    /// Returns every component of a completed rollout to the previous version.
    async fn undo_rollout(self: &Arc<Self>, rolled: Rolled) -> Result<(), String> {
        let previous = self.previous();
        let mut notes = Vec::new();
        match rolled {
            Rolled::Docker(components) => {
                for (plan, new) in components {
                    if let Err(note) = self.roll_back(previous, &plan, new, 0).await {
                        notes.push(note);
                    }
                }
            }
            // A restart runs the version that was already active.
            Rolled::Swarm(_, true) => {}
            Rolled::Swarm(defs, false) => {
                let Some(mode) = &self.engine.inner.swarm else {
                    return Ok(());
                };
                for def in &defs {
                    if let Err(note) = self.restore_service(mode, previous, def).await {
                        notes.push(note);
                    }
                }
            }
        }
        if notes.is_empty() {
            Ok(())
        } else {
            Err(notes.join("; "))
        }
    }

    async fn ensure_database(
        self: &Arc<Self>,
        d: &Deployment,
        db: &slipway_spec::DatabaseSpec,
    ) -> Result<(), Failure> {
        let path = ["deploy", db.name.as_str()];
        self.start_step(&path).await;
        let fail = |code, message: String| Failure::new(&path, code, message);
        let (reference, data_dir) = db.image_and_data_dir().ok_or_else(|| {
            fail(
                FailureCode::InvalidSpec,
                format!("database {} has no image", db.name),
            )
        })?;
        let inner = &self.engine.inner;
        let image = inner
            .builder
            .resolve(&reference)
            .await
            .map_err(|e| fail(e.code(), error_chain(&e)))?;
        let spec = InstanceSpec {
            app_id: d.app_id.clone(),
            app_name: self.app_name.clone(),
            component: db.name.clone(),
            kind: Some(ComponentKind::Database),
            deployment_id: d.id.clone(),
            image,
            env: db
                .envs
                .iter()
                .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                .collect(),
            run_command: None,
            ports: Vec::new(),
            network: Some(templates::network_name(&d.app_id)),
            labels: daemon_labels(self.daemon_id(), &d.app_id),
        };
        let volume = templates::volume_name(&d.app_id, &db.name);
        let runs_as = if let Some(mode) = &inner.swarm {
            let name = slipway_swarm::service_name(&d.app_id, &db.name);
            // A database is created once and never updated: only a new one needs its image in
            // the registry.
            let exists = mode
                .swarm
                .service(&name)
                .await
                .map_err(|e| {
                    fail(
                        narrowed(FailureCode::DatabaseFailed, e.code()),
                        error_chain(&e),
                    )
                })?
                .is_some();
            if exists {
                name
            } else {
                let pushed = mode
                    .push(&spec.image, &d.app_id, &db.name)
                    .await
                    .map_err(|e| fail(e.code(), error_chain(&e)))?;
                let def = slipway_swarm::ServiceDef {
                    daemon_id: self.daemon_id().to_string(),
                    app_id: d.app_id.clone(),
                    component: db.name.clone(),
                    kind: Some(ComponentKind::Database),
                    deployment_id: d.id.clone(),
                    image: pushed,
                    env: spec.env.clone(),
                    replicas: 1,
                    network: Some(slipway_swarm::network_name(&d.app_id)),
                    volume: Some((volume, data_dir)),
                    ..Default::default()
                };
                mode.swarm.ensure_database(&def).await.map_err(|e| {
                    fail(
                        narrowed(FailureCode::DatabaseFailed, e.code()),
                        error_chain(&e),
                    )
                })?
            }
        } else {
            inner
                .runtime
                .ensure_database(&spec, &volume, &data_dir)
                .await
                .map_err(|e| {
                    fail(
                        narrowed(FailureCode::DatabaseFailed, e.code()),
                        error_chain(&e),
                    )
                })?
                .name
        };
        self.update(|d| {
            d.progress.succeed_with(
                &path,
                now(),
                &format!("database {} runs as {runs_as}", db.name),
            )
        })
        .await;
        Ok(())
    }

    /// Runs the jobs of one kind, one after another. The first that fails stops the rest.
    async fn run_jobs(self: &Arc<Self>, kind: JobKind, step: &str) -> Result<(), Failure> {
        let d = self.opened().await?;
        let jobs: Vec<String> = d
            .spec
            .jobs
            .iter()
            .filter(|j| j.kind() == kind)
            .map(|j| j.name.clone())
            .collect();
        if jobs.is_empty() {
            return Ok(());
        }
        if kind == JobKind::FailedDeploy {
            self.update(|d| {
                let mut s = Step::new(step);
                for j in &jobs {
                    s = s.child(
                        Step::new(j)
                            .component(j)
                            .message(format!("Running job {j}")),
                    );
                }
                d.progress.push(&[], s);
            })
            .await;
        }
        self.start_step(&[step]).await;
        for job in &jobs {
            let path = [step, job.as_str()];
            self.start_step(&path).await;
            let Some(spec) = templates::instance_spec(&self.app_name, &d, job, self.daemon_id())
            else {
                return Err(Failure::new(
                    &path,
                    FailureCode::JobFailed,
                    format!("job {job} has no image in this deployment"),
                ));
            };
            let cancel = if kind == JobKind::FailedDeploy {
                CancellationToken::new()
            } else {
                self.cancel.clone()
            };
            let (output, ran_as, exit_code) = self.run_job(&d, job, &path, &spec, &cancel).await?;
            let mut lines: Vec<String> = output.lines().map(str::to_string).collect();
            lines.push(format!("job {job} ({ran_as}) exited with code {exit_code}"));
            self.log(LogKind::Deploy, job, lines).await;
            if exit_code != 0 {
                let tail: Vec<&str> = output.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(Failure::new(
                    &path,
                    FailureCode::JobFailed,
                    format!(
                        "job {job} exited with code {exit_code}{}",
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!("; its last output: {}", tail.join(" | "))
                        }
                    ),
                ));
            }
            self.update(|d| d.progress.succeed_with(&path, now(), "exited with code 0"))
                .await;
        }
        self.update(|d| d.progress.succeed(&[step], now())).await;
        Ok(())
    }

    /// Runs one job to its end: `(its output, what it ran as, its exit code)`.
    async fn run_job(
        &self,
        d: &Deployment,
        job: &str,
        path: &[&str],
        spec: &InstanceSpec,
        cancel: &CancellationToken,
    ) -> Result<(String, String, i64), Failure> {
        let inner = &self.engine.inner;
        let timeout = inner.config.job_timeout;
        let Some(mode) = &inner.swarm else {
            let outcome = inner
                .runtime
                .run_job(spec, timeout, cancel)
                .await
                .map_err(|e| {
                    Failure::new(
                        path,
                        narrowed(FailureCode::JobFailed, e.code()),
                        error_chain(&e),
                    )
                })?;
            return Ok((outcome.output, outcome.container_name, outcome.exit_code));
        };
        let def = mode
            .def(d, job, self.daemon_id())
            .map_err(|reason| Failure::new(path, FailureCode::JobFailed, reason))?;
        let name = slipway_swarm::service_name(&d.app_id, job);
        tokio::select! {
            outcome = mode.swarm.run_job(&def, timeout) => {
                let outcome = outcome.map_err(|e| Failure::new(path, narrowed(FailureCode::JobFailed, e.code()), error_chain(&e)))?;
                Ok((outcome.logs, format!("Swarm job {name}"), outcome.exit_code))
            }
            () = cancel.cancelled() => {
                if let Err(e) = mode.swarm.remove(&name).await {
                    tracing::warn!(job = %name, error = %error_chain(&e), "removing a canceled job failed");
                }
                Err(Failure::canceled(path))
            }
        }
    }

    /// Rolls out every component concurrently; if one fails, the others stop and every
    /// component returns to the previous version.
    async fn roll_all(
        self: &Arc<Self>,
        d: &Deployment,
        previous: Option<&Deployment>,
        components: &[String],
    ) -> Result<Vec<(ComponentPlan, Vec<Instance>)>, Failure> {
        let inner = &self.engine.inner;
        let group = self.cancel.child_token();
        let mut plans = Vec::new();
        for name in components {
            let path = ["deploy", name.as_str()];
            let Some(template) =
                templates::instance_spec(&self.app_name, d, name, self.daemon_id())
            else {
                return Err(Failure::new(
                    &path,
                    FailureCode::InvalidSpec,
                    format!("{name} has no image in this deployment"),
                ));
            };
            let has_healthcheck = if d
                .spec
                .service(name)
                .is_some_and(|s| s.health_check.is_none())
            {
                inner
                    .runtime
                    .image_has_healthcheck(&template.image)
                    .await
                    .unwrap_or(false)
            } else {
                false
            };
            let old = self.current_instances(&d.app_id, name).await?;
            let target = templates::instance_count(&d.spec, name);
            let (drain, grace) = templates::termination(&d.spec, name);
            plans.push(ComponentPlan {
                component: name.clone(),
                bounds: templates::bounds(&d.spec, name, target),
                old,
                template,
                readiness: templates::readiness(
                    &d.spec,
                    name,
                    has_healthcheck,
                    inner.config.worker_min_ready,
                ),
                drain,
                grace,
            });
        }
        for p in &plans {
            self.start_step(&["deploy", p.component.as_str()]).await;
        }
        let rolls = plans.iter().cloned().map(|plan| {
            let observer: Arc<dyn Observer> = Arc::new(StepObserver {
                run: Arc::clone(self),
                component: plan.component.clone(),
                steps: true,
            });
            let group = group.clone();
            let runtime = inner.runtime.clone();
            async move {
                let result = roll(&runtime, plan, observer, &group).await;
                if result.is_err() {
                    group.cancel();
                }
                result
            }
        });
        let results = join_all(rolls).await;
        let failed: Vec<&RolloutError> = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .filter(|e| !e.canceled)
            .collect();
        let canceled = self.cancel.is_cancelled();
        if failed.is_empty() && !canceled {
            for p in &plans {
                let path = ["deploy", p.component.as_str()];
                self.update(|d| {
                    d.progress.succeed_with(
                        &path,
                        now(),
                        &format!("{0}/{0} instances ready", p.bounds.target),
                    )
                })
                .await;
            }
            return Ok(plans
                .into_iter()
                .zip(results)
                .map(|(plan, r)| (plan, r.unwrap_or_default()))
                .collect());
        }
        // Return every component to the previous version.
        let mut rollback_notes = Vec::new();
        for (plan, result) in plans.iter().zip(&results) {
            let (new_ready, old_running) = match result {
                Ok(new) => (new.clone(), Vec::new()),
                Err(e) => (e.new_ready.clone(), e.old_running.clone()),
            };
            if let Err(note) = self
                .roll_back(previous, plan, new_ready, old_running.len() as u32)
                .await
            {
                rollback_notes.push(note);
            }
        }
        let note = if rollback_notes.is_empty() {
            String::new()
        } else {
            format!("; rolling back also failed: {}", rollback_notes.join("; "))
        };
        if canceled && failed.is_empty() {
            let mut f = Failure::canceled(&["deploy"]);
            f.message.push_str(&note);
            return Err(f);
        }
        let first = failed[0];
        let logs = first.logs.trim();
        let message = format!(
            "{}: {}{}; the previous version keeps running{note}",
            first.component,
            first.reason,
            if logs.is_empty() {
                String::new()
            } else {
                let tail: Vec<&str> = logs.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("; its last log lines: {}", tail.join(" | "))
            }
        );
        let code = first.code();
        Err(Failure::new(
            &["deploy", first.component.as_str()],
            code,
            message,
        ))
    }

    /// Replaces `new_ready` instances of a component with instances of the previous
    /// deployment, as many as the failed rollout had stopped.
    async fn roll_back(
        self: &Arc<Self>,
        previous: Option<&Deployment>,
        plan: &ComponentPlan,
        new_ready: Vec<Instance>,
        old_still_running: u32,
    ) -> Result<(), String> {
        let stopped_old = (plan.old.len() as u32).saturating_sub(old_still_running);
        if new_ready.is_empty() && stopped_old == 0 {
            return Ok(());
        }
        let template = previous.and_then(|p| {
            templates::instance_spec(&self.app_name, p, &plan.component, self.daemon_id())
        });
        let (template, target) = match template {
            Some(t) => (t, stopped_old),
            // The component is new in this deployment: rolling back removes it.
            None => (plan.template.clone(), 0),
        };
        let back = ComponentPlan {
            bounds: slipway_rollout::Bounds::new(
                target,
                plan.bounds.max_surge,
                plan.bounds.max_unavailable,
            ),
            old: new_ready,
            template,
            ..plan.clone()
        };
        tracing::info!(component = %plan.component, target, "rolling back");
        let observer = Arc::new(StepObserver {
            run: Arc::clone(self),
            component: plan.component.clone(),
            steps: false,
        });
        roll(
            &self.engine.inner.runtime,
            back,
            observer,
            &CancellationToken::new(),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// The containers of a component that run now (any deployment's).
    async fn current_instances(
        &self,
        app_id: &str,
        component: &str,
    ) -> Result<Vec<Instance>, Failure> {
        self.engine
            .inner
            .runtime
            .list(&[
                (labels::APP, app_id),
                (labels::COMPONENT, component),
                (labels::DAEMON, self.daemon_id()),
            ])
            .await
            .map_err(|e| Failure::new(&["deploy", component], e.code(), error_chain(&e)))
    }
}

/// Reports a component's rollout transitions into the deployment's steps (unless `steps` is
/// false, for a rollback) and DEPLOY log, and keeps the ingress's pool in step: a ready
/// instance joins it, an old one is drained out of it before it is stopped.
struct StepObserver {
    run: Arc<Run>,
    component: String,
    steps: bool,
}

impl StepObserver {
    fn http_port(&self, d: &Deployment) -> Option<u16> {
        d.spec
            .service(&self.component)
            .map(|s| s.http_port.unwrap_or(8080))
    }
}

impl Observer for StepObserver {
    fn event(&self, event: Event) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let c = self.component.as_str();
            let line = match &event {
                Event::Starting { .. } => format!("{c}: starting a new instance"),
                Event::Ready { instance, .. } => format!("{c}: {} is ready", instance.name),
                Event::Failed {
                    instance, reason, ..
                } => format!("{c}: {instance} {reason}"),
                Event::Stopping { instance, .. } => format!("{c}: stopping {}", instance.name),
                Event::Stopped { instance, .. } => {
                    format!("{c}: {} stopped and removed", instance.name)
                }
            };
            self.run.log(LogKind::Deploy, c, vec![line]).await;
            if let Event::Ready { instance, .. } = &event {
                let d = self.run.snapshot().await;
                if let Some(addr) = self.http_port(&d).and_then(|p| instance.address(p)) {
                    self.run
                        .engine
                        .inner
                        .ingress
                        .add(&d.app_id, c, &instance.id, addr);
                }
            }
            if !self.steps {
                return;
            }
            self.run
                .update(|d| {
                    let Some(step) = d.progress.find_mut(&["deploy", c]) else {
                        return;
                    };
                    let at = now();
                    match &event {
                        Event::Starting { .. } => {
                            if let Some(s) = step
                                .steps
                                .iter_mut()
                                .find(|s| s.status == StepStatus::Pending)
                            {
                                s.status = StepStatus::Running;
                                s.started_at = Some(at);
                            }
                        }
                        Event::Ready { instance, .. } => {
                            if let Some(s) = step
                                .steps
                                .iter_mut()
                                .find(|s| s.status == StepStatus::Running)
                            {
                                s.status = StepStatus::Success;
                                s.ended_at = Some(at);
                                s.message_base = Some(format!("{} ready", instance.name));
                            }
                        }
                        Event::Failed {
                            instance, reason, ..
                        } => {
                            if let Some(s) = step
                                .steps
                                .iter_mut()
                                .find(|s| s.status == StepStatus::Running)
                            {
                                s.status = StepStatus::Error;
                                s.ended_at = Some(at);
                                s.reason = Some(slipway_spec::StepReason {
                                    code: "InstanceFailed".into(),
                                    message: format!("{instance} {reason}"),
                                });
                            }
                        }
                        Event::Stopping { .. } | Event::Stopped { .. } => {}
                    }
                    let ready = step
                        .steps
                        .iter()
                        .filter(|s| s.status == StepStatus::Success)
                        .count();
                    step.message_base =
                        Some(format!("{ready}/{} new instances ready", step.steps.len()));
                })
                .await;
        })
    }

    fn drain<'a>(&'a self, instance: &'a Instance, max: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let app_id = self.run.dep.lock().await.app_id.clone();
            self.run
                .engine
                .inner
                .ingress
                .drain(&app_id, &self.component, &instance.id, max)
                .await;
        })
    }
}

/// The step tree of a deployment: its build and jobs when it builds, and the instances of
/// each component it rolls out.
fn step_tree(d: &Deployment) -> Vec<Step> {
    let spec = &d.spec;
    let mut steps = Vec::new();
    // The step of the jobs of one kind, if the app has any: a child for each.
    let jobs_step = |kind: JobKind, name: &str| -> Option<Step> {
        let mut jobs = spec.jobs.iter().filter(|j| j.kind() == kind).peekable();
        jobs.peek()?;
        Some(jobs.fold(Step::new(name), |s, j| {
            s.child(
                Step::new(&j.name)
                    .component(&j.name)
                    .message(format!("Running job {}", j.name)),
            )
        }))
    };
    if d.kind == DeploymentKind::Build {
        let mut build = Step::new("build");
        for (kind, c) in spec.buildable() {
            build = build.child(
                Step::new(c.name)
                    .component(c.name)
                    .message(format!("Building {kind} {}", c.name)),
            );
        }
        steps.push(build);
        steps.extend(jobs_step(JobKind::PreDeploy, "pre-deploy"));
    }
    let mut deploy = Step::new("deploy");
    if d.kind == DeploymentKind::Build {
        for db in &spec.databases {
            deploy = deploy.child(
                Step::new(&db.name)
                    .component(&db.name)
                    .message(format!("Starting database {}", db.name)),
            );
        }
    }
    for name in rollout_components(d) {
        let count = templates::instance_count(spec, &name);
        let kind = spec.kind_of(&name).map_or("service", |k| k.as_str());
        let mut s = Step::new(&name)
            .component(&name)
            .message(format!("Rolling out {kind} {name}"));
        for i in 1..=count {
            s = s.child(Step::new(format!("instance {i}/{count}")).component(&name));
        }
        deploy = deploy.child(s);
    }
    steps.push(deploy);
    if d.kind == DeploymentKind::Build {
        steps.extend(jobs_step(JobKind::PostDeploy, "post-deploy"));
    }
    steps
}

/// The services and workers a deployment rolls out.
fn rollout_components(d: &Deployment) -> Vec<String> {
    let all = d
        .spec
        .services
        .iter()
        .map(|s| s.name.clone())
        .chain(d.spec.workers.iter().map(|w| w.name.clone()));
    match d.kind {
        DeploymentKind::Restart if !d.restart_components.is_empty() => {
            all.filter(|n| d.restart_components.contains(n)).collect()
        }
        _ => all.collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use slipway_spec::{Deployment, DeploymentKind, Step, parse_spec};

    use super::{step_tree, wait_in_line};
    use crate::AppSlot;

    /// Every step of a tree as its path, parents first.
    fn paths(steps: &[Step], parent: &str, out: &mut Vec<String>) {
        for s in steps {
            let path = format!("{parent}{}", s.name);
            out.push(path.clone());
            paths(&s.steps, &format!("{path}/"), out);
        }
    }

    #[test]
    fn the_step_tree_builds_runs_jobs_and_rolls_out_or_only_rolls_out_what_restarts() {
        let spec = parse_spec(
            r#"
name: shop
services:
  - name: web
    git: {repo_clone_url: "https://example.com/shop.git", branch: main}
    instance_count: 2
  - name: api
    image: {repository: api, tag: "1"}
workers:
  - name: worker
    git: {repo_clone_url: "https://example.com/shop.git", branch: main}
databases:
  - name: db
    image: {repository: db, tag: "1"}
    data_dir: /data
jobs:
  - name: migrate
    kind: PRE_DEPLOY
    image: {repository: job, tag: "1"}
  - name: seed
    kind: PRE_DEPLOY
    image: {repository: job, tag: "1"}
  - name: notify
    kind: POST_DEPLOY
    image: {repository: job, tag: "1"}
"#,
        )
        .unwrap()
        .spec;
        let tree = |kind, restart: &[&str]| {
            let mut d = Deployment::new("app", spec.clone(), kind, "test");
            d.restart_components = restart.iter().map(ToString::to_string).collect();
            let mut out = Vec::new();
            paths(&step_tree(&d), "", &mut out);
            out
        };
        // What every deployment that rolls out everything rolls out.
        let rollout = [
            "deploy/web",
            "deploy/web/instance 1/2",
            "deploy/web/instance 2/2",
            "deploy/api",
            "deploy/api/instance 1/1",
            "deploy/worker",
            "deploy/worker/instance 1/1",
        ];
        let build = [
            "build",
            "build/web",
            "build/api",
            "build/worker",
            "build/migrate",
            "build/seed",
            "build/notify",
            "pre-deploy",
            "pre-deploy/migrate",
            "pre-deploy/seed",
            "deploy",
            "deploy/db",
        ]
        .into_iter()
        .chain(rollout)
        .chain(["post-deploy", "post-deploy/notify"]);
        assert_eq!(tree(DeploymentKind::Build, &[]), build.collect::<Vec<_>>());
        assert_eq!(
            tree(DeploymentKind::Restart, &["worker"]),
            ["deploy", "deploy/worker", "deploy/worker/instance 1/1"]
        );
        assert_eq!(
            tree(DeploymentKind::Restart, &[]),
            ["deploy"].into_iter().chain(rollout).collect::<Vec<_>>(),
            "a restart of everything rolls out every service and worker, and runs no job"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deployments_take_their_turn_in_the_order_they_were_queued() {
        let slot = Arc::new(AppSlot::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let tickets: Vec<u64> = (0..4)
            .map(|_| {
                slot.tickets
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            })
            .collect();
        // Their tasks start newest first, each a moment after the one before.
        let mut tasks = Vec::new();
        for &ticket in tickets.iter().rev() {
            let (slot, order) = (Arc::clone(&slot), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let (_next, _turn) = wait_in_line(&slot, ticket).await;
                order.lock().unwrap().push(ticket);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), tickets);
    }

    #[tokio::test]
    async fn a_task_that_ends_early_passes_the_turn_on() {
        let slot = Arc::new(AppSlot::default());
        let (first, second) = (0, 1);
        // The first one's task goes before its turn came (it was canceled, or panicked).
        let waiting = {
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                let _ = wait_in_line(&slot, second).await;
            })
        };
        let gone = {
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                let _ = wait_in_line(&slot, first).await;
                panic!("ends abruptly");
            })
        };
        assert!(gone.await.is_err());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the next one got its turn")
            .unwrap();
    }
}
