//! Following a rolling update: a pure verdict from what Swarm reports (the service's spec and
//! `UpdateStatus`, and its tasks), so that the decision is tested without Docker.

use bollard::models::{
    Service, ServiceUpdateStatusStateEnum, Task, TaskSpec, TaskSpecContainerSpec, TaskState,
};

/// A task's transition, as reported while an update runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    pub task_id: String,
    /// The replica's slot (1-based), when the service is replicated.
    pub slot: Option<i64>,
    pub node_id: String,
    /// Swarm's task state: `preparing`, `starting`, `running`, `shutdown`, `failed`, ...
    pub state: String,
    /// What Swarm wants the task to be: `running` or `shutdown`.
    pub desired: String,
    /// Whether the task runs the spec the update wrote (a new task; it stays new while Swarm
    /// rolls the update back).
    pub current: bool,
    /// Swarm's message, and the error of a failed task.
    pub message: String,
    /// The task's container, once it has one (on its node).
    pub container_id: Option<String>,
}

/// How a finished update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// The tasks running the new spec.
    pub running: usize,
}

/// What to do after looking at the service and its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not done yet; why.
    Wait(String),
    Done(UpdateOutcome),
    RolledBack(String),
    Paused(String),
    /// A service just created (there is no previous version to roll back to) whose every
    /// task failed; the last task's error.
    NeverStarted(String),
}

/// The part of a task spec that an update changes (the container, down to its labels, and the
/// force-update counter): a task whose part equals the service's runs the current spec.
fn key(spec: Option<&TaskSpec>) -> (Option<u64>, Option<&TaskSpecContainerSpec>) {
    (
        spec.and_then(|s| s.force_update),
        spec.and_then(|s| s.container_spec.as_ref()),
    )
}

pub(crate) fn is_current(service: &Service, task: &Task) -> bool {
    let template = service.spec.as_ref().and_then(|s| s.task_template.as_ref());
    key(template) == key(task.spec.as_ref())
}

/// The service's task template, as written by this update.
pub(crate) fn template(service: &Service) -> Option<TaskSpec> {
    service.spec.as_ref().and_then(|s| s.task_template.clone())
}

/// The tasks a replicated service wants (1 otherwise).
pub(crate) fn replicas(service: &Service) -> usize {
    service
        .spec
        .as_ref()
        .and_then(|s| s.mode.as_ref())
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .and_then(|r| usize::try_from(r).ok())
        .unwrap_or(1)
}

/// The verdict on an update that wrote `intended` as the task template.
pub(crate) fn judge(intended: Option<&TaskSpec>, service: &Service, tasks: &[Task]) -> Verdict {
    let status = service.update_status.as_ref();
    let state = status
        .and_then(|s| s.state)
        .unwrap_or(ServiceUpdateStatusStateEnum::EMPTY);
    let message = status.and_then(|s| s.message.clone()).unwrap_or_default();
    let current = template(service);
    let ours = key(intended) == key(current.as_ref());
    if !ours {
        // The template is no longer ours: Swarm is rolling back (or someone else changed it).
        return match state {
            ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED => Verdict::RolledBack(message),
            ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED => Verdict::Paused(message),
            _ => Verdict::Wait(format!("rolling back ({state})")),
        };
    }
    if state == ServiceUpdateStatusStateEnum::PAUSED {
        return Verdict::Paused(message);
    }
    let wanted_running = |t: &&Task| t.desired_state == Some(TaskState::RUNNING);
    let running = tasks
        .iter()
        .filter(wanted_running)
        .filter(|t| is_current(service, t))
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .count();
    let old = tasks
        .iter()
        .filter(wanted_running)
        .filter(|t| !is_current(service, t))
        .count();
    let want = replicas(service);
    if status.is_none() && running < want {
        // A new service: Swarm has nothing to roll back to and would restart failing tasks
        // for ever. As many failed tasks as replicas is a failed start.
        let failed: Vec<&Task> = tasks
            .iter()
            .filter(|t| {
                matches!(
                    t.status.as_ref().and_then(|s| s.state),
                    Some(TaskState::FAILED | TaskState::REJECTED)
                )
            })
            .collect();
        if failed.len() >= want.max(1) {
            let last = failed
                .iter()
                .map(|t| event(current.as_ref(), t).message)
                .rfind(|m| !m.is_empty())
                .unwrap_or_default();
            return Verdict::NeverStarted(last);
        }
    }
    if running == want && old == 0 && state != ServiceUpdateStatusStateEnum::UPDATING {
        Verdict::Done(UpdateOutcome { running })
    } else {
        Verdict::Wait(format!(
            "{running} of {want} new tasks running, {old} old ones left ({state})"
        ))
    }
}

/// A task's state as an event; `current` when it runs `intended`, the task template the update
/// wrote (so a new task stays new while Swarm rolls the update back).
pub(crate) fn event(intended: Option<&TaskSpec>, task: &Task) -> TaskEvent {
    let status = task.status.as_ref();
    let mut message = status.and_then(|s| s.message.clone()).unwrap_or_default();
    if let Some(err) = status.and_then(|s| s.err.as_ref()) {
        message = format!("{message}: {err}");
    }
    TaskEvent {
        task_id: task.id.clone().unwrap_or_default(),
        slot: task.slot,
        node_id: task.node_id.clone().unwrap_or_default(),
        state: status
            .and_then(|s| s.state)
            .map_or_else(String::new, |s| s.to_string()),
        desired: task
            .desired_state
            .map_or_else(String::new, |s| s.to_string()),
        current: key(intended) == key(task.spec.as_ref()),
        message,
        container_id: status
            .and_then(|s| s.container_status.as_ref())
            .and_then(|c| c.container_id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceUpdateStatus, TaskStatus,
    };

    fn tmpl(force: u64, image: &str) -> TaskSpec {
        TaskSpec {
            force_update: Some(force),
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn service(t: TaskSpec, state: Option<ServiceUpdateStatusStateEnum>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                task_template: Some(t),
                mode: Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated { replicas: Some(2) }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_status: state.map(|s| ServiceUpdateStatus {
                state: Some(s),
                message: Some("msg".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(t: TaskSpec, state: TaskState, desired: TaskState) -> Task {
        Task {
            spec: Some(t),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn done_only_when_every_replica_runs_the_new_spec() {
        use TaskState::*;
        let new = tmpl(2, "img");
        let old = tmpl(1, "img");
        let s = service(new.clone(), Some(ServiceUpdateStatusStateEnum::COMPLETED));
        let half = [
            task(new.clone(), RUNNING, RUNNING),
            task(old.clone(), RUNNING, RUNNING),
        ];
        assert!(matches!(judge(Some(&new), &s, &half), Verdict::Wait(_)));
        let all = [
            task(new.clone(), RUNNING, RUNNING),
            task(new.clone(), RUNNING, RUNNING),
            task(old.clone(), SHUTDOWN, SHUTDOWN),
        ];
        assert_eq!(
            judge(Some(&new), &s, &all),
            Verdict::Done(UpdateOutcome { running: 2 })
        );
        let updating = service(new.clone(), Some(ServiceUpdateStatusStateEnum::UPDATING));
        assert!(matches!(
            judge(Some(&new), &updating, &all),
            Verdict::Wait(_)
        ));
    }

    #[test]
    fn a_new_service_whose_every_task_failed_never_started() {
        use TaskState::*;
        let new = tmpl(0, "img");
        let s = service(new.clone(), None);
        let mut failed = task(new.clone(), FAILED, SHUTDOWN);
        failed.status.as_mut().unwrap().err = Some("task: non-zero exit (3)".into());
        let one = [failed.clone(), task(new.clone(), STARTING, RUNNING)];
        assert!(matches!(judge(Some(&new), &s, &one), Verdict::Wait(_)));
        let two = [
            failed.clone(),
            failed.clone(),
            task(new.clone(), STARTING, RUNNING),
        ];
        match judge(Some(&new), &s, &two) {
            Verdict::NeverStarted(m) => assert!(m.contains("non-zero exit (3)"), "{m}"),
            other => panic!("{other:?}"),
        }
        // An update is Swarm's to roll back: failures alone do not end it.
        let updating = service(new.clone(), Some(ServiceUpdateStatusStateEnum::UPDATING));
        assert!(matches!(
            judge(Some(&new), &updating, &two),
            Verdict::Wait(_)
        ));
    }

    #[test]
    fn a_reverted_template_is_a_rollback_once_swarm_says_so() {
        use TaskState::*;
        let new = tmpl(1, "img:v2");
        let old = tmpl(1, "img:v1");
        let tasks = [
            task(old.clone(), RUNNING, RUNNING),
            task(old.clone(), RUNNING, RUNNING),
        ];
        let started = service(
            old.clone(),
            Some(ServiceUpdateStatusStateEnum::ROLLBACK_STARTED),
        );
        assert!(matches!(
            judge(Some(&new), &started, &tasks),
            Verdict::Wait(_)
        ));
        let done = service(
            old.clone(),
            Some(ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED),
        );
        assert_eq!(
            judge(Some(&new), &done, &tasks),
            Verdict::RolledBack("msg".into())
        );
        let paused = service(new.clone(), Some(ServiceUpdateStatusStateEnum::PAUSED));
        assert_eq!(
            judge(Some(&new), &paused, &tasks),
            Verdict::Paused("msg".into())
        );
    }
}
