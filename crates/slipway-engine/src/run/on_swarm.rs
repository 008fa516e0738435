//! Rolling out on a swarm: each component's Swarm rolling update, followed from the task
//! states into the deployment's steps and DEPLOY log, with the same all-or-nothing rule as on
//! one engine.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use slipway_spec::{Deployment, DeploymentKind, FailureCode, StepStatus, error_chain, now};
use slipway_store::LogKind;
use slipway_swarm::{ServiceDef, SwarmError, TaskEvent, service_name};
use tokio_util::sync::CancellationToken;

use super::{Failure, Run};
use crate::swarm::SwarmMode;

/// Why one component's update did not finish.
pub(super) enum Stopped {
    Canceled,
    Failed {
        error: SwarmError,
        /// What the last new task that failed said.
        task: Option<String>,
    },
}

impl Run {
    /// Updates every component's service concurrently (a restart bumps the force-update
    /// counter; a build deployment writes the new spec). When one fails (Swarm rolls it back by
    /// itself), the others are no longer waited for: in a build deployment they are returned
    /// at once to the previous deployment's version, and services new in it are removed.
    pub(super) async fn roll_all_on_swarm(
        self: &Arc<Self>,
        mode: &SwarmMode,
        d: &Deployment,
        previous: Option<&Deployment>,
        components: &[String],
    ) -> Result<Vec<ServiceDef>, Failure> {
        let restart = d.kind == DeploymentKind::Restart;
        let mut defs = Vec::new();
        for name in components {
            let def = mode.def(d, name, self.daemon_id()).map_err(|reason| {
                Failure::new(&["deploy", name], FailureCode::InvalidSpec, reason)
            })?;
            defs.push(def);
        }
        for def in &defs {
            self.start_step(&["deploy", def.component.as_str()]).await;
        }
        // The first component that fails stops the others, as on one engine.
        let group = self.cancel.child_token();
        let results = join_all(defs.iter().map(|def| {
            let group = &group;
            async move {
                let result = self.update_service(mode, d, def, restart, group).await;
                if matches!(result, Err(Stopped::Failed { .. })) {
                    group.cancel();
                }
                result
            }
        }))
        .await;
        let canceled = self.cancel.is_cancelled();
        if !canceled && results.iter().all(Result::is_ok) {
            for def in &defs {
                let path = ["deploy", def.component.as_str()];
                self.update(|d| {
                    d.progress.succeed_with(
                        &path,
                        now(),
                        &format!("{0}/{0} tasks run the new version", def.replicas),
                    )
                })
                .await;
            }
            return Ok(defs);
        }
        // Return every component Swarm did not roll back itself to the previous version.
        let mut notes = Vec::new();
        if !restart {
            for (def, result) in defs.iter().zip(&results) {
                // Swarm rolled it back, or its canary failed before the service was touched.
                let unchanged = matches!(
                    result,
                    Err(Stopped::Failed {
                        error: SwarmError::RolledBack { .. } | SwarmError::CanaryFailed { .. },
                        ..
                    })
                );
                if unchanged {
                    continue;
                }
                if let Err(note) = self.restore_service(mode, previous, def).await {
                    notes.push(note);
                }
            }
        }
        let note = if notes.is_empty() {
            String::new()
        } else {
            format!("; rolling back also failed: {}", notes.join("; "))
        };
        let first = defs.iter().zip(&results).find_map(|(def, r)| match r {
            Err(Stopped::Failed { error, task }) => Some((def, error, task)),
            _ => None,
        });
        let Some((def, error, task)) = first else {
            let mut f = Failure::canceled(&["deploy"]);
            f.message.push_str(&note);
            return Err(f);
        };
        let task = task
            .as_deref()
            .map(|t| format!("; a new task: {t}"))
            .unwrap_or_default();
        Err(Failure::new(
            &["deploy", def.component.as_str()],
            error.code(),
            format!(
                "{}{task}; the previous version keeps running{note}",
                error_chain(error)
            ),
        ))
    }

    /// One component's update, followed to its end or until `stop` fires.
    async fn update_service(
        self: &Arc<Self>,
        mode: &SwarmMode,
        d: &Deployment,
        def: &ServiceDef,
        restart: bool,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let failed = |error| Stopped::Failed { error, task: None };
        // A restart runs the version already proven: only its new tasks are checked.
        let gate = slipway_swarm::HealthGate::of(def);
        if !restart && let Some(gate) = &gate {
            self.prove_canary(mode, def, gate, stop).await?;
        }
        let name = if restart {
            mode.swarm.restart(def).await.map_err(failed)?
        } else {
            mode.swarm.apply(def).await.map_err(failed)?
        };
        if def.http_port.is_some() {
            self.engine
                .follow_service(mode, &d.app_id, &d.spec, &def.component);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<TaskEvent>();
        let timeout = mode.config.update_timeout;
        let component = def.component.as_str();
        let wait = async move {
            tokio::select! {
                r = mode.swarm.wait(&name, component, timeout, move |e| {
                    let _ = tx.send(e.clone());
                }) => Some(r),
                () = stop.cancelled() => None,
            }
        };
        let report = async {
            let mut steps: HashMap<String, (usize, bool)> = HashMap::new();
            let mut last_failure = None;
            while let Some(e) = rx.recv().await {
                if let Some(m) = self.task_event(mode, component, &e, &mut steps).await {
                    last_failure = Some(m);
                }
            }
            last_failure
        };
        let (result, task) = tokio::join!(wait, report);
        match (result, gate) {
            (None, _) => Err(Stopped::Canceled),
            (Some(Ok(_)), Some(gate)) => self.prove_new_tasks(mode, def, &gate, stop).await,
            (Some(Ok(_)), None) => Ok(()),
            (Some(Err(error)), _) => Err(Stopped::Failed { error, task }),
        }
    }

    /// Returns a component's service to the previous deployment's version and waits for it;
    /// removes it when the component is new in this deployment.
    pub(super) async fn restore_service(
        &self,
        mode: &SwarmMode,
        previous: Option<&Deployment>,
        def: &ServiceDef,
    ) -> Result<(), String> {
        let name = service_name(&def.app_id, &def.component);
        let back = previous.and_then(|p| mode.def(p, &def.component, self.daemon_id()).ok());
        let Some(back) = back else {
            tracing::info!(component = %def.component, "removing a service new in the failed deployment");
            mode.unfollow(&def.app_id, Some(&def.component));
            return mode
                .swarm
                .remove(&name)
                .await
                .map_err(|e| format!("{}: {}", def.component, error_chain(&e)));
        };
        tracing::info!(component = %def.component, "returning the service to the previous version");
        self.log(
            LogKind::Deploy,
            &def.component,
            vec![format!(
                "{}: returning to the previous version",
                def.component
            )],
        )
        .await;
        let result = async {
            mode.swarm.apply(&back).await?;
            mode.swarm
                .wait(&name, &def.component, mode.config.update_timeout, |_| {})
                .await
        }
        .await;
        result
            .map(|_| ())
            .map_err(|e| format!("{}: {}", def.component, error_chain(&e)))
    }

    /// Reports one task transition in the DEPLOY log and in the component's instance steps;
    /// returns the task's message when a new task failed.
    async fn task_event(
        self: &Arc<Self>,
        mode: &SwarmMode,
        component: &str,
        e: &TaskEvent,
        steps: &mut HashMap<String, (usize, bool)>,
    ) -> Option<String> {
        let short: String = e.task_id.chars().take(10).collect();
        let task = match e.slot {
            Some(slot) => format!("{component}.{slot} ({short})"),
            None => format!("{component} ({short})"),
        };
        let which = if e.current { "new task" } else { "task" };
        let detail = if e.message.is_empty() {
            String::new()
        } else {
            format!(": {}", e.message)
        };
        let line = format!(
            "{component}: {which} {task} is {} (desired {}){detail}",
            e.state, e.desired
        );
        self.log(LogKind::Deploy, component, vec![line]).await;
        if !e.current {
            return None;
        }
        let running = e.state == "running" && e.desired == "running";
        let was_ready = steps.get(&e.task_id).is_some_and(|(_, ready)| *ready);
        // A new task that fails, or is stopped before it was ever ready (Swarm stops a task
        // whose health check fails), failed.
        let ended = matches!(
            e.state.as_str(),
            "failed" | "rejected" | "complete" | "shutdown" | "orphaned" | "remove"
        );
        let failed = matches!(e.state.as_str(), "failed" | "rejected") || (ended && !was_ready);
        let mut message = format!("{task} ended before it was ready ({}{detail})", e.state);
        if failed
            && let Some(container) = &e.container_id
            && let Some(health) = mode.swarm.failed_health_check(container).await
        {
            message = format!("{message}; {health}");
        }
        if running && let Some(entry) = steps.get_mut(&e.task_id) {
            entry.1 = true;
        }
        let task_id = e.task_id.clone();
        self.update(|d| {
            let Some(step) = d.progress.find_mut(&["deploy", component]) else {
                return;
            };
            let at = now();
            let index = match steps.get(&task_id) {
                Some((i, _)) => Some(*i),
                None if e.desired == "running" && !ended => {
                    let free = step
                        .steps
                        .iter()
                        .position(|s| s.status == StepStatus::Pending);
                    if let Some(i) = free {
                        steps.insert(task_id.clone(), (i, running));
                        step.steps[i].status = StepStatus::Running;
                        step.steps[i].started_at = Some(at);
                    }
                    free
                }
                None => None,
            };
            if let Some(s) = index.and_then(|i| step.steps.get_mut(i)) {
                if running && s.status != StepStatus::Success {
                    s.status = StepStatus::Success;
                    s.ended_at = Some(at);
                    s.message_base = Some(format!("{task} ready"));
                } else if failed && s.status != StepStatus::Success {
                    s.status = StepStatus::Error;
                    s.ended_at = Some(at);
                    s.reason = Some(slipway_spec::StepReason {
                        code: "InstanceFailed".into(),
                        message: message.clone(),
                    });
                }
            }
            let ready = step
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Success)
                .count();
            step.message_base = Some(format!("{ready}/{} new tasks ready", step.steps.len()));
        })
        .await;
        failed.then_some(message)
    }
}
