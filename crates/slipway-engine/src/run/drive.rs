//! The driver: one deployment through its lifecycle ([`crate::lifecycle`]), over the
//! [`Steps`] that carry it out (Docker's or Swarm's in the engine, an in-memory world in the
//! fault-injection tests).
//!
//! Its promises, whatever fails and wherever a cancel arrives:
//! - a phase is written to the store before anyone is told (API, SSE, panel, CLI); a phase
//!   whose write fails is not claimed, and the deployment takes the failure path;
//! - the switch-over commits once, under the deployment's [`Control`]: a cancel that comes
//!   first wins and the new instances are removed; once committed, a cancel is refused;
//! - the deployment becomes ACTIVE only through the store's activation (which supersedes the
//!   previous ACTIVE one in the same transaction); when that write fails, every component
//!   returns to the previous version and the deployment ends in ERROR with
//!   [`FailureCode::StoreFailed`];
//! - its final phase is written before its turn passes on: a store that refuses is tried
//!   again until it takes the write or the engine stops (the next start settles it then).

use std::time::Duration;

use futures::future::BoxFuture;
use slipway_spec::{
    Deployment, DeploymentError, DeploymentKind, FailureCode, Phase, Step, error_chain, now,
};

use super::Failure;
use crate::lifecycle::{self, Control, Event};

/// A store write that did not happen, in words.
#[derive(Debug, Clone)]
pub(crate) struct StoreFault(pub String);

impl StoreFault {
    pub fn from_error(e: &slipway_store::StoreError) -> Self {
        StoreFault(error_chain(e))
    }
}

/// A change to a deployment, applied before it is written.
pub(crate) type Change<'a> = Box<dyn FnOnce(&mut Deployment) + Send + 'a>;

/// What carries a deployment out: the store, the builds, the rollout.
pub(crate) trait Steps: Send + Sync {
    /// What a rollout leaves for undoing it.
    type Rolled: Send;

    /// The deployment as it is now (as last changed).
    fn snapshot(&self) -> BoxFuture<'_, Deployment>;

    /// Applies `change`, writes the deployment to the store, and only once it is written tells
    /// the watchers. When the write fails nobody is told; the change is kept for the next write
    /// when `keep` (a step's progress), and dropped otherwise (a phase is not claimed).
    fn write<'a>(&'a self, change: Change<'a>, keep: bool)
    -> BoxFuture<'a, Result<(), StoreFault>>;

    /// Writes the deployment ACTIVE and the previous ACTIVE one SUPERSEDED, in one
    /// transaction, then tells the watchers; nothing is claimed when it fails.
    fn activate(&self) -> BoxFuture<'_, Result<(), StoreFault>>;

    /// Reads what the deployment starts from (the previous version) and lays out its steps.
    fn begin(&self) -> BoxFuture<'_, Result<(), Failure>>;
    /// Fetches and builds every image (a build deployment).
    fn build(&self) -> BoxFuture<'_, Result<(), Failure>>;
    /// What comes before the rollout: the network, and in a build deployment the databases
    /// and PRE_DEPLOY jobs.
    fn prepare(&self) -> BoxFuture<'_, Result<(), Failure>>;
    /// Rolls every component out, each new instance proven by its health check; on failure
    /// (or cancel) every component is back on the previous version when it returns.
    fn roll_out(&self) -> BoxFuture<'_, Result<Self::Rolled, Failure>>;
    /// Returns every component a completed rollout changed to the previous version; says what
    /// could not be returned.
    fn undo(&self, rolled: Self::Rolled) -> BoxFuture<'_, Result<(), String>>;
    /// After the commit: the POST_DEPLOY jobs (a failure is reported, not rolled back).
    fn post_deploy(&self) -> BoxFuture<'_, ()>;
    /// After a build deployment failed: the FAILED_DEPLOY jobs.
    fn failed_deploy(&self) -> BoxFuture<'_, ()>;
    /// After the deployment ended (ACTIVE or not): routes, image retention.
    fn settled(&self, active: bool) -> BoxFuture<'_, ()>;
    /// Waits before a final write is tried again; false when the engine is stopping.
    fn backoff(&self, attempt: u32) -> BoxFuture<'_, bool>;
}

/// Runs a deployment whose turn came, from PENDING_BUILD (a build) or PENDING_DEPLOY (a
/// restart) to its final phase.
pub(crate) async fn drive<S: Steps>(s: &S, control: &Control) {
    let kind = s.snapshot().await.kind;
    let cancel = control.token().clone();
    let result = async {
        s.begin().await?;
        if kind == DeploymentKind::Build {
            advance(s, Event::Start).await?;
            s.build().await?;
            advance(s, Event::Built).await?;
        }
        if cancel.is_cancelled() {
            return Err(Failure::canceled(&["deploy"]));
        }
        advance(s, Event::Deploy).await?;
        s.prepare().await?;
        let rolled = s.roll_out().await?;
        commit(s, control, rolled).await
    }
    .await;
    match result {
        Ok(()) => s.settled(true).await,
        Err(f) => {
            tracing::warn!(code = %f.code, message = %f.message, "deployment failed");
            if kind == DeploymentKind::Build {
                s.failed_deploy().await;
            }
            let event = if f.code == FailureCode::Canceled
                || (cancel.is_cancelled() && f.code != FailureCode::StoreFailed)
            {
                Event::Cancel
            } else {
                Event::Fail
            };
            end(s, &f, event).await;
            s.settled(false).await;
        }
    }
    control.end().await;
}

/// Moves the deployment by `event`, written before it is claimed.
async fn advance<S: Steps>(s: &S, event: Event) -> Result<(), Failure> {
    let from = s.snapshot().await.phase;
    let to = lifecycle::next(from, event)
        .map_err(|refused| Failure::new(&[], FailureCode::Interrupted, refused.to_string()))?;
    s.write(Box::new(move |d| d.set_phase(to)), false)
        .await
        .map_err(|StoreFault(why)| Failure::store(to, &why))
}

/// The switch-over: committed unless a cancel came first, then POST_DEPLOY, then ACTIVE.
async fn commit<S: Steps>(s: &S, control: &Control, rolled: S::Rolled) -> Result<(), Failure> {
    if !control.commit().await {
        let note = undo_note(s.undo(rolled).await);
        let mut f = Failure::canceled(&["deploy"]);
        f.message.push_str(&note);
        return Err(f);
    }
    s.post_deploy().await;
    if let Err(StoreFault(why)) = s.activate().await {
        tracing::error!(error = %why, "the store did not take the deployment's activation: returning to the previous version");
        let note = undo_note(s.undo(rolled).await);
        let mut f = Failure::store(Phase::Active, &why);
        f.message.push_str(&note);
        return Err(f);
    }
    Ok(())
}

fn undo_note(result: Result<(), String>) -> String {
    match result {
        Ok(()) => "; the previous version was restored".to_string(),
        Err(why) => format!("; returning to the previous version failed: {why}"),
    }
}

/// Writes the deployment's final phase and why, trying again until the store takes it (or the
/// engine stops: the deployment is then settled when the engine starts again).
async fn end<S: Steps>(s: &S, f: &Failure, event: Event) {
    let mut attempt = 0;
    loop {
        let from = s.snapshot().await.phase;
        let Ok(to) = lifecycle::next(from, event) else {
            tracing::error!(phase = %from, "a deployment that has ended cannot fail");
            return;
        };
        let change: Change<'_> = Box::new(move |d| record_failure(d, f, to));
        match s.write(change, false).await {
            Ok(()) => return,
            Err(StoreFault(why)) => {
                tracing::error!(attempt, error = %why, "the store did not take the deployment's final phase; trying again");
                if !s.backoff(attempt).await {
                    return;
                }
                attempt += 1;
            }
        }
    }
}

/// Puts a failure in the deployment: on its step (or a step of its own), in `error`, and the
/// phase it ends in.
pub(crate) fn record_failure(d: &mut Deployment, f: &Failure, phase: Phase) {
    let at = now();
    let path: Vec<&str> = f.path.iter().map(String::as_str).collect();
    let code = f.code.as_str();
    if path.is_empty() || d.progress.find_mut(&path).is_none() {
        d.progress.push(&[], Step::new("error"));
        d.progress.fail(&["error"], at, code, &f.message);
    } else {
        d.progress.fail(&path, at, code, &f.message);
    }
    d.error = Some(DeploymentError {
        code: f.code,
        message: f.message.clone(),
    });
    d.set_phase(phase);
}

/// How long a final write waits before it is tried again: 100 ms, doubling, at most 5 s.
pub(crate) fn backoff_delay(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
}

/// What a deployment that a stopped daemon left unfinished becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Every new instance had become ready: it is completed, to be activated.
    Completed,
    /// It ends in ERROR; what it started is to be removed.
    RolledBack,
}

/// Settles a deployment a stopped daemon left unfinished, in memory (the caller writes it:
/// [`Settled::Completed`] through the store's activation).
pub(crate) fn settle_interrupted(d: &mut Deployment) -> Settled {
    let at = now();
    let running: Vec<String> = d.progress.running_path();
    let was = if running.is_empty() {
        d.phase.to_string()
    } else {
        running.join("/")
    };
    if crate::reconcile::proven(d)
        && let Ok(to) = lifecycle::next(d.phase, Event::Activate)
    {
        d.progress.push(
            &[],
            Step::new("recovered").message(format!(
                "the daemon stopped during {was}, after every new instance was ready: the rollout was completed when it started again"
            )),
        );
        d.progress.succeed(&["recovered"], at);
        d.progress.succeed_finished(at);
        d.set_phase(to);
        return Settled::Completed;
    }
    let message = format!(
        "the daemon stopped during {was}: the previous version was restored when it started again"
    );
    let f = Failure {
        path: running,
        code: FailureCode::Interrupted,
        message,
    };
    let to = lifecycle::next(d.phase, Event::Fail).unwrap_or(Phase::Error);
    record_failure(d, &f, to);
    Settled::RolledBack
}
