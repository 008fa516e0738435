//! Running one component's rollout against a [`Runtime`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use slipway_spec::{FailureCode, error_chain};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::plan::{Bounds, Counts, Step, next_step};
use crate::readiness::{NotReady, Readiness, wait_ready};
use crate::runtime::{Instance, InstanceSpec, Runtime, RuntimeError};

/// Everything one component's rollout needs.
#[derive(Debug, Clone)]
pub struct ComponentPlan {
    pub component: String,
    pub bounds: Bounds,
    /// The instances to replace.
    pub old: Vec<Instance>,
    /// What each new instance is made from.
    pub template: InstanceSpec,
    pub readiness: Readiness,
    /// How long an old instance may finish in-flight work after it leaves the pool.
    pub drain: Duration,
    /// How long after its stop signal an old instance is killed.
    pub grace: Duration,
}

/// A transition of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new instance is being created.
    Starting { component: String },
    /// A new instance passed its readiness check and joins the pool.
    Ready {
        component: String,
        instance: Instance,
    },
    /// A new instance failed; it has been removed.
    Failed {
        component: String,
        instance: String,
        reason: String,
    },
    /// An old instance left the pool and is being drained and stopped.
    Stopping {
        component: String,
        instance: Instance,
    },
    /// An old instance is gone.
    Stopped {
        component: String,
        instance: Instance,
    },
}

/// What the rollout tells the world: every transition, and the traffic hooks.
pub trait Observer: Send + Sync + 'static {
    /// Called on every transition, before the rollout goes on (so it can be saved).
    fn event(&self, event: Event) -> BoxFuture<'_, ()>;

    /// Takes `instance` out of its component's pool and waits until the requests in flight to
    /// it have finished, or `max` has passed.
    fn drain<'a>(&'a self, instance: &'a Instance, max: Duration) -> BoxFuture<'a, ()>;
}

/// An observer for instances that take no traffic through Slipway: nothing to drain.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTraffic;

impl Observer for NoTraffic {
    fn event(&self, _event: Event) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn drain<'a>(&'a self, _instance: &'a Instance, _max: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Why a rollout stopped before it was complete. `new_ready` and `old_running` say what runs
/// now, so that the caller can roll back.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{component}: {reason}")]
pub struct RolloutError {
    pub component: String,
    /// One sentence: which instance, and why.
    pub reason: String,
    /// The last lines of the failed instance's log, if one failed.
    pub logs: String,
    /// New instances that became ready before the rollout stopped; they still run.
    pub new_ready: Vec<Instance>,
    /// Old instances that still run.
    pub old_running: Vec<Instance>,
    /// The rollout was canceled rather than failed.
    pub canceled: bool,
    code: FailureCode,
}

impl RolloutError {
    /// The stable code a deployment that fails with this error ends with: why the instance
    /// that failed did ([`FailureCode::HealthCheckFailed`], [`FailureCode::RolloutFailed`],
    /// [`FailureCode::RuntimeUnreachable`]), or [`FailureCode::Canceled`].
    pub fn code(&self) -> FailureCode {
        self.code
    }
}

enum Finished {
    Started(Result<Instance, StartFailure>),
    Stopped(Instance, Result<(), String>),
}

struct StartFailure {
    name: String,
    reason: String,
    logs: String,
    canceled: bool,
    code: FailureCode,
}

/// The code of a failed start: Docker that cannot be reached is said so; anything else Docker
/// refused is the new instance that could not start.
fn start_code(e: &RuntimeError) -> FailureCode {
    match e.code() {
        FailureCode::RuntimeFailed => FailureCode::RolloutFailed,
        code => code,
    }
}

/// Replaces `plan.old` with `plan.bounds.target` new instances made from `plan.template`.
///
/// Cancel-safe only through `cancel`: fire it and await the future, and every new instance
/// not yet ready is removed before it returns.
#[tracing::instrument(skip_all, fields(component = %plan.component, target = plan.bounds.target))]
pub async fn roll<R: Runtime>(
    rt: &R,
    plan: ComponentPlan,
    observer: Arc<dyn Observer>,
    cancel: &CancellationToken,
) -> Result<Vec<Instance>, RolloutError> {
    let stop_all = cancel.child_token();
    let mut old: VecDeque<Instance> = plan.old.iter().cloned().collect();
    let mut counts = Counts {
        old_ready: old.len() as u32,
        ..Counts::default()
    };
    let mut new_ready: Vec<Instance> = Vec::new();
    let mut tasks: JoinSet<Finished> = JoinSet::new();
    let mut failure: Option<StartFailure> = None;
    let mut stop_errors: Vec<String> = Vec::new();

    loop {
        if failure.is_none() && !stop_all.is_cancelled() {
            match next_step(plan.bounds, counts) {
                Step::Done => break,
                Step::Wait => {}
                Step::Act { start, stop } => {
                    for _ in 0..stop {
                        let Some(instance) = old.pop_front() else {
                            break;
                        };
                        counts.old_ready -= 1;
                        counts.old_stopping += 1;
                        observer
                            .event(Event::Stopping {
                                component: plan.component.clone(),
                                instance: instance.clone(),
                            })
                            .await;
                        let (rt, observer) = (rt.clone(), Arc::clone(&observer));
                        let (drain, grace) = (plan.drain, plan.grace);
                        tasks.spawn(async move {
                            observer.drain(&instance, drain).await;
                            let result = rt.stop(&instance, grace).await.map_err(|e| {
                                format!("stopping {} failed: {}", instance.name, error_chain(&e))
                            });
                            Finished::Stopped(instance, result)
                        });
                    }
                    for _ in 0..start {
                        counts.new_starting += 1;
                        observer
                            .event(Event::Starting {
                                component: plan.component.clone(),
                            })
                            .await;
                        let rt = rt.clone();
                        let (template, readiness) = (plan.template.clone(), plan.readiness.clone());
                        let token = stop_all.clone();
                        tasks.spawn(async move {
                            Finished::Started(start_one(&rt, &template, &readiness, &token).await)
                        });
                    }
                    continue;
                }
            }
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok(Finished::Started(Ok(instance))) => {
                // An instance that became ready while the rollout was stopping still runs; it
                // is reported in `new_ready` and the caller decides what to do with it.
                counts.new_starting -= 1;
                counts.new_ready += 1;
                observer
                    .event(Event::Ready {
                        component: plan.component.clone(),
                        instance: instance.clone(),
                    })
                    .await;
                new_ready.push(instance);
            }
            Ok(Finished::Started(Err(f))) => {
                counts.new_starting -= 1;
                if !f.canceled {
                    observer
                        .event(Event::Failed {
                            component: plan.component.clone(),
                            instance: f.name.clone(),
                            reason: f.reason.clone(),
                        })
                        .await;
                    if failure.is_none() {
                        failure = Some(f);
                        stop_all.cancel();
                    }
                }
            }
            Ok(Finished::Stopped(instance, result)) => {
                counts.old_stopping -= 1;
                if let Err(e) = result {
                    tracing::warn!(instance = %instance.name, error = %e, "stop failed");
                    stop_errors.push(e);
                }
                observer
                    .event(Event::Stopped {
                        component: plan.component.clone(),
                        instance,
                    })
                    .await;
            }
            Err(join) => {
                // A task panicked: treat it as a failure of the rollout.
                if failure.is_none() {
                    failure = Some(StartFailure {
                        name: String::from("(unknown)"),
                        reason: format!("a rollout task failed: {join}"),
                        logs: String::new(),
                        canceled: false,
                        code: FailureCode::RolloutFailed,
                    });
                    stop_all.cancel();
                }
            }
        }
    }

    if let Some(f) = failure {
        return Err(RolloutError {
            component: plan.component,
            reason: format!("instance {} {}", f.name, f.reason),
            logs: f.logs,
            new_ready,
            old_running: old.into_iter().collect(),
            canceled: false,
            code: f.code,
        });
    }
    if cancel.is_cancelled() {
        return Err(RolloutError {
            component: plan.component,
            reason: "the rollout was canceled".into(),
            logs: String::new(),
            new_ready,
            old_running: old.into_iter().collect(),
            canceled: true,
            code: FailureCode::Canceled,
        });
    }
    if !stop_errors.is_empty() {
        tracing::warn!(errors = ?stop_errors, "old instances that could not be stopped are left to the reconciler");
    }
    Ok(new_ready)
}

async fn start_one<R: Runtime>(
    rt: &R,
    template: &InstanceSpec,
    readiness: &Readiness,
    cancel: &CancellationToken,
) -> Result<Instance, StartFailure> {
    let instance = rt.start(template).await.map_err(|e| StartFailure {
        name: format!("of {}", template.component),
        reason: format!("could not start: {}", error_chain(&e)),
        logs: String::new(),
        canceled: false,
        code: start_code(&e),
    })?;
    let ready = match wait_ready(rt, &instance, readiness, cancel).await {
        Ok(()) => rt.keep_running(&instance).await.map_err(|e| {
            let code = start_code(&e);
            (
                NotReady::Timeout {
                    seconds: 0.0,
                    last: format!("could not set its restart policy: {}", error_chain(&e)),
                },
                code,
            )
        }),
        Err(why) => {
            let code = why.code();
            Err((why, code))
        }
    };
    match ready {
        Ok(()) => Ok(instance),
        Err((why, code)) => {
            let logs = match why {
                NotReady::Canceled => String::new(),
                _ => rt.last_logs(&instance, 20).await,
            };
            if let Err(e) = rt.stop(&instance, Duration::ZERO).await {
                tracing::warn!(instance = %instance.name, error = %error_chain(&e), "removing a failed instance failed");
            }
            Err(StartFailure {
                name: instance.name.clone(),
                reason: why.to_string(),
                logs,
                canceled: why == NotReady::Canceled,
                code,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use crate::fake::Fake;
    use crate::runtime::Probe;
    use proptest::prelude::*;

    fn plan(old: Vec<Instance>, image: &str, bounds: Bounds) -> ComponentPlan {
        ComponentPlan {
            component: "web".into(),
            bounds,
            old,
            template: InstanceSpec {
                component: "web".into(),
                image: image.into(),
                ..InstanceSpec::default()
            },
            readiness: Readiness {
                period: Duration::from_millis(1),
                failure_threshold: 3,
                ..Readiness::with_defaults(Probe::Tcp { port: 8080 })
            },
            drain: Duration::ZERO,
            grace: Duration::ZERO,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Over many instance counts and bounds: the bounds hold at every moment and every
        /// instance ends on the new image.
        #[test]
        fn rollout_respects_bounds(
            old_n in 0u32..8, target in 1u32..8, surge in 0u32..4, unavailable in 0u32..4,
        ) {
            let bounds = Bounds::new(target, surge, unavailable);
            let (fake, old) = Fake::with_old("v1", old_n);
            let result = runtime().block_on(roll(
                &fake,
                plan(old, "v2", bounds),
                Arc::new(fake.clone()),
                &CancellationToken::new(),
            ));
            let s = fake.state.lock().unwrap();
            prop_assert_eq!(result.unwrap().len() as u32, target);
            prop_assert!(s.max_live as u32 <= bounds.max_total().max(old_n), "max live {}", s.max_live);
            prop_assert!(s.min_ready as u32 >= bounds.min_ready().min(old_n), "min ready {}", s.min_ready);
            prop_assert!(s.live.values().all(|i| i == "v2"));
            prop_assert_eq!(s.live.len() as u32, target);
        }

        /// A new instance that fails stops the rollout; rolling back leaves only old
        /// instances, as many as before, and nothing else.
        #[test]
        fn failure_then_rollback_leaves_only_old_instances(
            old_n in 1u32..7, surge in 0u32..3, unavailable in 0u32..3, fail_nth in 0u32..6,
        ) {
            let bounds = Bounds::new(old_n, surge, unavailable);
            let (fake, old) = Fake::with_old("v1", old_n);
            fake.state.lock().unwrap().fail_nth = Some(fail_nth.min(old_n - 1));
            let rt = runtime();
            let err = rt
                .block_on(roll(&fake, plan(old, "v2", bounds), Arc::new(fake.clone()), &CancellationToken::new()))
                .unwrap_err();
            prop_assert!(!err.canceled);
            prop_assert!(err.reason.contains("exited with code 3"), "{}", err.reason);
            {
                let s = fake.state.lock().unwrap();
                let expected: BTreeSet<String> = err.new_ready.iter().chain(&err.old_running).map(|i| i.id.clone()).collect();
                let live: BTreeSet<String> = s.live.keys().cloned().collect();
                prop_assert_eq!(live, expected, "only what the error reports still runs");
            }
            // Roll back: the new instances that run are replaced by as many old-version
            // instances as were stopped.
            fake.state.lock().unwrap().fail_nth = None;
            let survivors = err.old_running.len() as u32;
            let mut rollback = plan(err.new_ready.clone(), "v1", Bounds::new(old_n - survivors, surge, unavailable));
            rollback.template.image = "v1".into();
            let made = rt.block_on(roll(&fake, rollback, Arc::new(fake.clone()), &CancellationToken::new()));
            prop_assert!(made.is_ok());
            let s = fake.state.lock().unwrap();
            prop_assert!(s.live.values().all(|i| i == "v1"));
            prop_assert_eq!(s.live.len() as u32, old_n);
        }
    }

    #[tokio::test]
    async fn cancel_removes_instances_not_yet_ready() {
        let (fake, old) = Fake::with_old("v1", 3);
        fake.state.lock().unwrap().bad_images.insert("never".into());
        let cancel = CancellationToken::new();
        let mut p = plan(old, "never", Bounds::new(3, 3, 0));
        p.readiness.failure_threshold = 100_000;
        // Probes answer "exited" for bad images; make them hang instead by cancelling first.
        cancel.cancel();
        let err = roll(&fake, p, Arc::new(fake.clone()), &cancel)
            .await
            .unwrap_err();
        assert!(err.canceled);
        let s = fake.state.lock().unwrap();
        assert!(s.live.values().all(|i| i == "v1"), "{:?}", s.live);
        assert_eq!(s.live.len(), 3);
    }
}
