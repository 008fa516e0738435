//! Fault injection: the driver ([`super::drive`]) run against an in-memory store and runtime
//! whose every call can be made to fail, to hang (and the daemon then crashes: the driver is
//! dropped and a new daemon settles the store), or to meet a cancel, at each call of a
//! restart and of a rebuild in turn. After each run, and after each recovery, the store must
//! agree with what serves.
//!
//! The rollouts themselves are `slipway_rollout::roll`'s, over an in-memory runtime; the
//! recovery is the engine's ([`super::settle_interrupted`]) and the convergence the
//! reconciler's ([`crate::reconcile::converge`]). This complements the real-Docker tests; it
//! does not replace them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use slipway_rollout::{
    Bounds, ComponentPlan, Instance, InstanceSpec, NoTraffic, Probe, ProbeResult, Readiness,
    Runtime, RuntimeError, roll,
};
use slipway_spec::{
    Deployment, DeploymentComponent, DeploymentKind, FailureCode, Phase, StepStatus, parse_spec,
};
use tokio_util::sync::CancellationToken;

use super::drive::{self, Change, Settled, StoreFault};
use super::{Failure, settle_interrupted, step_tree};
use crate::lifecycle::{self, CancelRefused, Canceled, Control, Event};

/// What happens at the chosen call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Fail,
    /// The call never returns; the daemon crashes.
    Hang,
    /// A cancel arrives just before the call.
    Cancel,
}

#[derive(Debug, Clone)]
struct Container {
    component: String,
    image: String,
    deployment: String,
}

/// What outlives a daemon: the store and the containers.
#[derive(Default)]
struct Shared {
    /// Deployments by ID, and the order they were created in.
    store: BTreeMap<String, Deployment>,
    order: Vec<String>,
    containers: BTreeMap<String, Container>,
    next: u32,
    /// Calls so far, and the one to inject at.
    calls: u32,
    inject: Option<(u32, Fault)>,
    /// The names of the calls, in order (the first run's, to know the points).
    trace: Vec<&'static str>,
    /// What each announcement said: (deployment, phase).
    announced: Vec<(String, Phase)>,
    /// The answer the cancel got.
    cancel: Option<Result<Canceled, CancelRefused>>,
}

#[derive(Clone, Default)]
struct World(Arc<Mutex<Shared>>);

impl World {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap()
    }

    /// One call of the store or the runtime: counted, and faulted when it is the chosen one.
    async fn call(&self, name: &'static str, control: Option<&Control>) -> Result<(), String> {
        let fault = {
            let mut s = self.lock();
            s.calls += 1;
            s.trace.push(name);
            match s.inject {
                Some((at, fault)) if at == s.calls => Some(fault),
                _ => None,
            }
        };
        match fault {
            None => Ok(()),
            Some(Fault::Fail) => Err(format!("{name} failed")),
            Some(Fault::Hang) => futures::future::pending().await,
            Some(Fault::Cancel) => {
                if let Some(control) = control {
                    let answer = control
                        .cancel_queued(async { Ok::<(), ()>(()) })
                        .await
                        .expect("the write cannot fail");
                    self.lock().cancel = Some(answer);
                }
                Ok(())
            }
        }
    }

    fn active(&self, app: &str) -> Vec<Deployment> {
        self.lock()
            .store
            .values()
            .filter(|d| d.app_id == app && d.phase == Phase::Active)
            .cloned()
            .collect()
    }

    fn start_container(&self, component: &str, image: &str, deployment: &str) -> String {
        let mut s = self.lock();
        s.next += 1;
        let id = format!("c{}", s.next);
        s.containers.insert(
            id.clone(),
            Container {
                component: component.into(),
                image: image.into(),
                deployment: deployment.into(),
            },
        );
        id
    }

    fn instances(&self, component: &str) -> Vec<Instance> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, c)| c.component == component)
            .map(|(id, c)| Instance {
                id: id.clone(),
                name: id.clone(),
                component: c.component.clone(),
                deployment_id: c.deployment.clone(),
                image: c.image.clone(),
                running: true,
                ..Instance::default()
            })
            .collect()
    }
}

/// A request Docker refused, saying `why`.
fn refused(why: String) -> RuntimeError {
    RuntimeError::Docker {
        action: "carry out",
        object: "a request".into(),
        source: bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: why,
        },
    }
}

/// The runtime's calls, through the world.
#[derive(Clone)]
struct Rt {
    world: World,
    control: Option<Arc<Control>>,
}

impl Runtime for Rt {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        self.world
            .call("runtime.start", self.control.as_deref())
            .await
            .map_err(refused)?;
        let id = self
            .world
            .start_container(&spec.component, &spec.image, &spec.deployment_id);
        Ok(Instance {
            id: id.clone(),
            name: id,
            component: spec.component.clone(),
            deployment_id: spec.deployment_id.clone(),
            image: spec.image.clone(),
            running: true,
            ..Instance::default()
        })
    }

    async fn keep_running(&self, _instance: &Instance) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn probe(&self, _instance: &Instance, _probe: &Probe, _t: Duration) -> ProbeResult {
        match self
            .world
            .call("runtime.probe", self.control.as_deref())
            .await
        {
            Ok(()) => ProbeResult::Ready,
            Err(why) => ProbeResult::Unhealthy(why),
        }
    }

    async fn stop(&self, instance: &Instance, _grace: Duration) -> Result<(), RuntimeError> {
        self.world
            .call("runtime.stop", self.control.as_deref())
            .await
            .map_err(refused)?;
        self.world.lock().containers.remove(&instance.id);
        Ok(())
    }

    async fn last_logs(&self, _instance: &Instance, _lines: usize) -> String {
        String::new()
    }
}

const SPEC: &str = "
name: shop
services:
  - name: web
    image: {repository: web, tag: '1'}
    instance_count: 2
workers:
  - name: worker
    image: {repository: worker, tag: '1'}
jobs:
  - name: migrate
    kind: PRE_DEPLOY
    image: {repository: job, tag: '1'}
";
const APP: &str = "app";
const COMPONENTS: [(&str, u32); 2] = [("web", 2), ("worker", 1)];

fn image_of(d: &Deployment, component: &str) -> String {
    d.component(component)
        .and_then(|c| c.image.as_ref())
        .map(|i| i.id.clone())
        .unwrap_or_default()
}

fn with_images(d: &mut Deployment, image: &str) {
    d.services = vec![component("web", image)];
    d.workers = vec![component("worker", image)];
    d.jobs = vec![component("migrate", image)];
}

fn component(name: &str, image: &str) -> DeploymentComponent {
    DeploymentComponent {
        name: name.into(),
        image: Some(slipway_spec::ComponentImage {
            id: image.into(),
            reference: image.into(),
            pushed: None,
        }),
        ..DeploymentComponent::default()
    }
}

/// The steps of one deployment over the world.
struct Fake {
    world: World,
    control: Arc<Control>,
    dep: tokio::sync::Mutex<Deployment>,
    previous: Mutex<Option<Deployment>>,
}

impl Fake {
    fn rt(&self) -> Rt {
        Rt {
            world: self.world.clone(),
            control: Some(Arc::clone(&self.control)),
        }
    }

    async fn call(&self, name: &'static str) -> Result<(), String> {
        self.world.call(name, Some(&self.control)).await
    }

    fn plan(&self, d: &Deployment, component: &str, count: u32) -> ComponentPlan {
        ComponentPlan {
            component: component.into(),
            bounds: Bounds::new(count, 1, 0),
            old: self.world.instances(component),
            template: InstanceSpec {
                app_id: d.app_id.clone(),
                component: component.into(),
                deployment_id: d.id.clone(),
                image: image_of(d, component),
                ..InstanceSpec::default()
            },
            readiness: Readiness {
                period: Duration::from_millis(10),
                failure_threshold: 1,
                ..Readiness::with_defaults(Probe::Tcp { port: 8080 })
            },
            drain: Duration::ZERO,
            grace: Duration::ZERO,
        }
    }

    /// Puts the previous version's instances in place of `new` (all that runs of the
    /// component).
    async fn back(&self, component: &str, count: u32) -> Result<(), String> {
        let previous = self.previous.lock().unwrap().clone();
        let Some(previous) = previous else {
            return Ok(());
        };
        let mut plan = self.plan(&previous, component, count);
        plan.bounds = Bounds::new(count, 1, 1);
        roll(
            &self.rt(),
            plan,
            Arc::new(NoTraffic),
            &CancellationToken::new(),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

impl drive::Steps for Fake {
    type Rolled = ();

    fn snapshot(&self) -> BoxFuture<'_, Deployment> {
        Box::pin(async move { self.dep.lock().await.clone() })
    }

    fn write<'a>(
        &'a self,
        change: Change<'a>,
        keep: bool,
    ) -> BoxFuture<'a, Result<(), StoreFault>> {
        Box::pin(async move {
            let mut d = self.dep.lock().await;
            let mut next = d.clone();
            change(&mut next);
            match self.call("store.save").await {
                Ok(()) => {
                    let mut s = self.world.lock();
                    s.store.insert(next.id.clone(), next.clone());
                    s.announced.push((next.id.clone(), next.phase));
                    *d = next;
                    Ok(())
                }
                Err(why) => {
                    if keep {
                        *d = next;
                    }
                    Err(StoreFault(why))
                }
            }
        })
    }

    fn activate(&self) -> BoxFuture<'_, Result<(), StoreFault>> {
        Box::pin(async move {
            let mut d = self.dep.lock().await;
            let mut next = d.clone();
            let to = lifecycle::next(next.phase, Event::Activate)
                .map_err(|r| StoreFault(r.to_string()))?;
            next.set_phase(to);
            self.call("store.activate").await.map_err(StoreFault)?;
            let mut s = self.world.lock();
            for old in s.store.values_mut() {
                if old.app_id == next.app_id && old.phase == Phase::Active {
                    old.set_phase(lifecycle::next(old.phase, Event::Replace).unwrap());
                }
            }
            s.store.insert(next.id.clone(), next.clone());
            s.announced.push((next.id.clone(), next.phase));
            *d = next;
            Ok(())
        })
    }

    fn begin(&self) -> BoxFuture<'_, Result<(), Failure>> {
        Box::pin(async move {
            self.call("store.read_active")
                .await
                .map_err(|why| Failure::new(&[], FailureCode::StoreFailed, why))?;
            let d = self.dep.lock().await.clone();
            *self.previous.lock().unwrap() = self.world.active(&d.app_id).into_iter().next();
            let steps = step_tree(&d);
            let _ = self
                .write(
                    Box::new(|d| d.progress = slipway_spec::Progress::new(steps)),
                    true,
                )
                .await;
            Ok(())
        })
    }

    fn build(&self) -> BoxFuture<'_, Result<(), Failure>> {
        Box::pin(async move {
            self.call("source.fetch")
                .await
                .map_err(|why| Failure::new(&["build"], FailureCode::SourceFetchFailed, why))?;
            self.call("builder.build")
                .await
                .map_err(|why| Failure::new(&["build"], FailureCode::BuildFailed, why))?;
            let image = format!("img-{}", self.dep.lock().await.id);
            let _ = self
                .write(Box::new(move |d| with_images(d, &image)), true)
                .await;
            Ok(())
        })
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), Failure>> {
        Box::pin(async move {
            self.call("runtime.network")
                .await
                .map_err(|why| Failure::new(&["deploy"], FailureCode::RuntimeFailed, why))?;
            if self.dep.lock().await.kind == DeploymentKind::Build {
                self.call("job.pre_deploy")
                    .await
                    .map_err(|why| Failure::new(&["pre-deploy"], FailureCode::JobFailed, why))?;
            }
            Ok(())
        })
    }

    fn roll_out(&self) -> BoxFuture<'_, Result<(), Failure>> {
        Box::pin(async move {
            let d = self.dep.lock().await.clone();
            let cancel = self.control.token().clone();
            let mut failed = None;
            let mut done = Vec::new();
            for (component, count) in COMPONENTS {
                let plan = self.plan(&d, component, count);
                match roll(&self.rt(), plan, Arc::new(NoTraffic), &cancel).await {
                    Ok(_) => {
                        done.push((component, count));
                        let _ = self
                            .write(
                                Box::new(move |d| {
                                    if let Some(step) = d.progress.find_mut(&["deploy", component])
                                    {
                                        for s in &mut step.steps {
                                            s.status = StepStatus::Success;
                                        }
                                    }
                                }),
                                true,
                            )
                            .await;
                    }
                    Err(e) => {
                        failed = Some(e);
                        done.push((component, count));
                        break;
                    }
                }
            }
            let Some(e) = failed else { return Ok(()) };
            for (component, count) in done {
                self.back(component, count).await.ok();
            }
            Err(if e.canceled {
                Failure::canceled(&["deploy"])
            } else {
                Failure::new(&["deploy"], FailureCode::RolloutFailed, e.to_string())
            })
        })
    }

    fn undo(&self, _rolled: ()) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut notes = Vec::new();
            for (component, count) in COMPONENTS {
                if let Err(why) = self.back(component, count).await {
                    notes.push(why);
                }
            }
            if notes.is_empty() {
                Ok(())
            } else {
                Err(notes.join("; "))
            }
        })
    }

    fn post_deploy(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.call("job.post_deploy").await;
        })
    }

    fn failed_deploy(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn settled(&self, _active: bool) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn backoff(&self, attempt: u32) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            tokio::time::sleep(drive::backoff_delay(attempt)).await;
            true
        })
    }
}

/// A world with one app whose first deployment is ACTIVE and runs.
fn world() -> (World, Deployment) {
    let spec = parse_spec(SPEC).unwrap().spec;
    let mut v1 = Deployment::new(APP, spec, DeploymentKind::Build, "test");
    with_images(&mut v1, "img-v1");
    v1.set_phase(Phase::Active);
    let world = World::default();
    {
        let mut s = world.lock();
        s.store.insert(v1.id.clone(), v1.clone());
        s.order.push(v1.id.clone());
    }
    for (component, count) in COMPONENTS {
        for _ in 0..count {
            world.start_container(component, "img-v1", &v1.id);
        }
    }
    (world, v1)
}

/// A new deployment of the app, saved as the engine's enqueue saves it.
fn queue(world: &World, active: &Deployment, kind: DeploymentKind) -> Deployment {
    let mut d = Deployment::new(APP, active.spec.clone(), kind, "test");
    if kind == DeploymentKind::Restart {
        d.phase = Phase::PendingDeploy;
        d.services = active.services.clone();
        d.workers = active.workers.clone();
        d.jobs = active.jobs.clone();
    }
    let mut s = world.lock();
    s.store.insert(d.id.clone(), d.clone());
    s.order.push(d.id.clone());
    d
}

/// The deployment's run; `None` when it hung (the daemon crashed).
async fn run(world: &World, d: &Deployment) -> Option<()> {
    let control = Arc::new(Control::new(CancellationToken::new()));
    assert!(control.start().await);
    let fake = Fake {
        world: world.clone(),
        control: Arc::clone(&control),
        dep: tokio::sync::Mutex::new(d.clone()),
        previous: Mutex::new(None),
    };
    let driven = tokio::time::timeout(Duration::from_secs(3600), drive::drive(&fake, &control));
    driven.await.ok()
}

/// A new daemon on the same store: unfinished deployments settled as the engine settles
/// them, containers of those rolled back removed.
async fn recover(world: &World) {
    let open: Vec<Deployment> = world
        .lock()
        .store
        .values()
        .filter(|d| d.phase.is_in_progress())
        .cloned()
        .collect();
    for mut d in open {
        let settled = settle_interrupted(&mut d);
        let mut s = world.lock();
        if settled == Settled::Completed {
            for old in s.store.values_mut() {
                if old.app_id == d.app_id && old.phase == Phase::Active {
                    old.set_phase(Phase::Superseded);
                }
            }
        } else {
            s.containers.retain(|_, c| c.deployment != d.id);
        }
        s.store.insert(d.id.clone(), d);
    }
}

/// The reconciler's convergence of every component to the active deployment.
fn reconcile(world: &World) {
    let active = world.active(APP);
    let Some(active) = active.first() else {
        world.lock().containers.clear();
        return;
    };
    for (component, count) in COMPONENTS {
        let image = image_of(active, component);
        let observed = world.instances(component);
        let plan = crate::reconcile::converge(&image, count, &active.id, &observed);
        let mut s = world.lock();
        for id in &plan.remove {
            s.containers.remove(id);
        }
        drop(s);
        for _ in 0..plan.start {
            world.start_container(component, &image, &active.id);
        }
    }
}

/// What runs of each component: `(image, deployment)` of each container.
fn serving(world: &World, component: &str) -> Vec<(String, String)> {
    world
        .lock()
        .containers
        .values()
        .filter(|c| c.component == component)
        .map(|c| (c.image.clone(), c.deployment.clone()))
        .collect()
}

/// The store agrees with what serves: one ACTIVE deployment, and exactly its instances of
/// each component run.
fn assert_agrees(world: &World, case: &str) {
    let active = world.active(APP);
    assert_eq!(active.len(), 1, "{case}: exactly one ACTIVE deployment");
    let active = &active[0];
    for (component, count) in COMPONENTS {
        let image = image_of(active, component);
        let running = serving(world, component);
        assert_eq!(
            running.len() as u32,
            count,
            "{case}: {component}: {running:?}"
        );
        assert!(
            running.iter().all(|(i, _)| *i == image),
            "{case}: {component} runs only {image}: {running:?}"
        );
    }
    assert!(
        world.lock().store.values().all(|d| d.phase.is_terminal()),
        "{case}: every deployment has ended"
    );
}

/// Every phase a deployment was announced in follows from the one before by a move of the
/// lifecycle, and its last announcement is what the store holds.
fn assert_announced_path(world: &World, d: &Deployment, case: &str) {
    let s = world.lock();
    let phases: Vec<Phase> = s
        .announced
        .iter()
        .filter(|(id, _)| *id == d.id)
        .map(|(_, p)| *p)
        .collect();
    let mut from = d.phase;
    for &to in &phases {
        if to == from {
            continue;
        }
        let events = [
            Event::Start,
            Event::Built,
            Event::Deploy,
            Event::Activate,
            Event::Supersede,
            Event::Fail,
            Event::Cancel,
        ];
        assert!(
            events.iter().any(|&e| lifecycle::next(from, e) == Ok(to)),
            "{case}: announced {from} then {to}: {phases:?}"
        );
        from = to;
    }
    let stored = s.store[&d.id].phase;
    if let Some(last) = phases.last() {
        assert_eq!(
            *last, stored,
            "{case}: the last announcement is what is stored"
        );
    }
}

/// Runs one deployment of `kind` with `fault` at call `at`, and checks what it left.
async fn case(kind: DeploymentKind, at: u32, fault: Fault) -> (Phase, Option<FailureCode>) {
    let (world, v1) = world();
    let d = queue(&world, &v1, kind);
    world.lock().inject = Some((at, fault));
    let case = format!("{kind:?} with {fault:?} at call {at}");
    let finished = run(&world, &d).await;
    if finished.is_none() {
        assert_eq!(fault, Fault::Hang, "{case}: only a hang stops a run");
        // The daemon crashed; a new one starts on the same store.
        world.lock().inject = None;
        recover(&world).await;
        reconcile(&world);
        assert_agrees(&world, &format!("{case}, after recovery"));
        let d = world.lock().store[&d.id].clone();
        return (d.phase, d.error.map(|e| e.code));
    }
    let ended = world.lock().store[&d.id].clone();
    assert!(ended.phase.is_terminal(), "{case}: {:?}", ended.phase);
    assert_announced_path(&world, &d, &case);
    // Before the reconciler runs: the new version serves exactly when the deployment is
    // ACTIVE.
    for (component, count) in COMPONENTS {
        let new = serving(&world, component)
            .into_iter()
            .filter(|(_, dep)| *dep == d.id)
            .count() as u32;
        if ended.phase == Phase::Active {
            assert_eq!(new, count, "{case}: {component} runs the new version");
        } else {
            assert_eq!(
                new, 0,
                "{case}: {component}: the new version does not serve"
            );
        }
    }
    let cancel = world.lock().cancel;
    match cancel {
        Some(Ok(Canceled::Running)) => {
            assert_eq!(ended.phase, Phase::Canceled, "{case}: the cancel won")
        }
        Some(Err(CancelRefused::Committing)) => {
            assert_eq!(ended.phase, Phase::Active, "{case}: the cancel was refused")
        }
        Some(other) => panic!("{case}: a running deployment's cancel answered {other:?}"),
        None => {}
    }
    if ended.phase != Phase::Active {
        let error = ended.error.clone().expect("a failed deployment says why");
        assert_eq!(
            ended.phase == Phase::Canceled,
            error.code == FailureCode::Canceled,
            "{case}: {error:?}"
        );
        assert_eq!(world.active(APP)[0].id, v1.id, "{case}: v1 stays ACTIVE");
    }
    reconcile(&world);
    assert_agrees(&world, &case);
    (ended.phase, ended.error.map(|e| e.code))
}

/// How many calls a run of `kind` makes with no fault.
async fn calls(kind: DeploymentKind) -> (u32, Vec<&'static str>) {
    let (world, v1) = world();
    let d = queue(&world, &v1, kind);
    run(&world, &d).await.expect("no fault, no hang");
    let s = world.lock();
    assert_eq!(s.store[&d.id].phase, Phase::Active);
    (s.calls, s.trace.clone())
}

#[tokio::test(start_paused = true)]
async fn every_fault_at_every_call_of_a_restart_and_a_rebuild_leaves_the_store_agreeing_with_what_serves()
 {
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for kind in [DeploymentKind::Restart, DeploymentKind::Build] {
        let (n, trace) = calls(kind).await;
        assert!(n >= 10, "{kind:?} makes {n} calls: {trace:?}");
        eprintln!("{kind:?}: {n} calls, each failing, hanging and meeting a cancel in turn");
        for at in 1..=n {
            for fault in [Fault::Fail, Fault::Hang, Fault::Cancel] {
                let (phase, code) = case(kind, at, fault).await;
                *outcomes
                    .entry(format!("{kind:?} {fault:?} -> {phase} {code:?}"))
                    .or_default() += 1;
            }
        }
    }
    eprintln!("{outcomes:#?}");
    // The faults reached every outcome: the store's failure, a cancel that won and one that
    // was refused, a recovery that completed and one that rolled back.
    let seen = |s: &str| outcomes.keys().any(|k| k.contains(s));
    for expected in [
        "Fail -> ERROR Some(StoreFailed)",
        "Fail -> ERROR Some(RolloutFailed)",
        "Build Fail -> ERROR Some(BuildFailed)",
        "Cancel -> CANCELED Some(Canceled)",
        "Cancel -> ACTIVE None",
        "Hang -> ACTIVE",
        "Hang -> ERROR Some(Interrupted)",
    ] {
        assert!(seen(expected), "no case ended {expected}: {outcomes:#?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_refuses_the_activation_leaves_the_previous_version_serving() {
    for kind in [DeploymentKind::Restart, DeploymentKind::Build] {
        let (_, trace) = calls(kind).await;
        let at = trace.iter().position(|c| *c == "store.activate").unwrap() as u32 + 1;
        let (phase, code) = case(kind, at, Fault::Fail).await;
        assert_eq!(
            (phase, code),
            (Phase::Error, Some(FailureCode::StoreFailed))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_refuses_a_phase_never_sees_it_claimed() {
    // The first write of a build is its step tree, the second BUILDING.
    let (world, v1) = world();
    let d = queue(&world, &v1, DeploymentKind::Build);
    let (_, trace) = calls(DeploymentKind::Build).await;
    let building = trace
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == "store.save")
        .nth(1)
        .unwrap()
        .0 as u32
        + 1;
    world.lock().inject = Some((building, Fault::Fail));
    run(&world, &d).await.unwrap();
    let s = world.lock();
    let phases: Vec<Phase> = s
        .announced
        .iter()
        .filter(|(id, _)| *id == d.id)
        .map(|(_, p)| *p)
        .collect();
    assert!(!phases.contains(&Phase::Building), "{phases:?}");
    assert_eq!(s.store[&d.id].phase, Phase::Error);
    assert_eq!(
        s.store[&d.id].error.as_ref().map(|e| e.code),
        Some(FailureCode::StoreFailed)
    );
}
