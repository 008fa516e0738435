//! A deployment's lifecycle: its phases (App Platform's), the events that move it, the one
//! function that decides every move, and what a cancel does in each stage.
//!
//! ```text
//!  from             event       to
//!  PENDING_BUILD    Start       BUILDING         a build deployment's turn came
//!  BUILDING         Built       PENDING_DEPLOY   every image is built (or reused)
//!  PENDING_DEPLOY   Deploy      DEPLOYING        a restart starts here
//!  DEPLOYING        Activate    ACTIVE           the new version serves, proven healthy
//!  ACTIVE           Replace     SUPERSEDED       a newer deployment became ACTIVE
//!  PENDING_*        Supersede   SUPERSEDED       queued, and a newer one waits behind it
//!  in progress      Fail        ERROR            the previous version serves
//!  in progress      Cancel      CANCELED         the previous version serves
//! ```
//!
//! ERROR, CANCELED and SUPERSEDED are final; every other move is refused ([`slipway_spec::lifecycle`] holds the table). The engine never
//! writes a phase that [`next`] did not give it, and writes it to the store before anyone is
//! told (see `run.rs`).
//!
//! A cancel ([`Control::cancel_queued`]) has one outcome per stage of the deployment's run:
//!
//! | stage | what a cancel does |
//! |---|---|
//! | queued (waiting for its turn) | it ends CANCELED at once and never runs |
//! | running, before the switch-over commits (fetching, building, jobs, rolling out) | it wins: the new instances are removed, every component returns to the previous version, CANCELED |
//! | committing (every new instance is ready and proven; POST_DEPLOY jobs, then ACTIVE) | refused (409): the new version already serves |
//! | ended | refused (422): the deployment has ended |

pub(crate) use slipway_spec::lifecycle::{Event, next};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Where a deployment's run is, for what a cancel may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Queued,
    Running,
    Committing,
    Ended,
}

/// Why a cancel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelRefused {
    /// The switch-over has begun committing: the new version serves.
    Committing,
    /// The deployment has ended.
    Ended,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Canceled {
    /// It had not started: it was written CANCELED.
    Queued,
    /// It runs: it stops, returns to the previous version and ends CANCELED.
    Running,
}

/// One deployment's cancel and commit, decided under one lock: a cancel and the switch-over's
/// commit never both win.
#[derive(Debug)]
pub(crate) struct Control {
    token: CancellationToken,
    stage: Mutex<Stage>,
}

impl Control {
    /// A queued deployment's control; `token` is fired by a cancel (and by the engine's
    /// shutdown, its parent).
    pub fn new(token: CancellationToken) -> Self {
        Control {
            token,
            stage: Mutex::new(Stage::Queued),
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Cancels a deployment that has not started: `write` saves it CANCELED, and only once it
    /// is saved does the deployment count as ended (its run will not start). When it started
    /// meanwhile, it is canceled as a running one.
    pub async fn cancel_queued<E>(
        &self,
        write: impl Future<Output = Result<(), E>>,
    ) -> Result<Result<Canceled, CancelRefused>, E> {
        let mut stage = self.stage.lock().await;
        match *stage {
            Stage::Queued => {
                write.await?;
                *stage = Stage::Ended;
                self.token.cancel();
                Ok(Ok(Canceled::Queued))
            }
            Stage::Running => {
                self.token.cancel();
                Ok(Ok(Canceled::Running))
            }
            Stage::Committing => Ok(Err(CancelRefused::Committing)),
            Stage::Ended => Ok(Err(CancelRefused::Ended)),
        }
    }

    /// The deployment's turn came: false when it was canceled first (by a cancel, or by the
    /// engine's shutdown).
    pub async fn start(&self) -> bool {
        let mut stage = self.stage.lock().await;
        if *stage != Stage::Queued || self.token.is_cancelled() {
            return false;
        }
        *stage = Stage::Running;
        true
    }

    /// The switch-over commits: from now on a cancel is refused. False when a cancel came
    /// first (it wins).
    pub async fn commit(&self) -> bool {
        let mut stage = self.stage.lock().await;
        if *stage != Stage::Running || self.token.is_cancelled() {
            return false;
        }
        *stage = Stage::Committing;
        true
    }

    pub async fn end(&self) {
        *self.stage.lock().await = Stage::Ended;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn saved() -> Result<(), &'static str> {
        Ok(())
    }

    #[tokio::test]
    async fn a_cancel_before_the_commit_wins_and_after_it_is_refused() {
        let c = Control::new(CancellationToken::new());
        assert!(c.start().await);
        assert_eq!(c.cancel_queued(saved()).await, Ok(Ok(Canceled::Running)));
        assert!(c.token().is_cancelled());
        assert!(!c.commit().await, "a cancel that came first wins");

        let c = Control::new(CancellationToken::new());
        assert!(c.start().await);
        assert!(c.commit().await);
        assert_eq!(
            c.cancel_queued(saved()).await,
            Ok(Err(CancelRefused::Committing))
        );
        assert!(!c.token().is_cancelled());
        c.end().await;
        assert_eq!(
            c.cancel_queued(saved()).await,
            Ok(Err(CancelRefused::Ended))
        );
    }

    #[tokio::test]
    async fn a_queued_cancel_ends_the_deployment_only_once_it_is_saved() {
        let c = Control::new(CancellationToken::new());
        let failed = c
            .cancel_queued(async { Err::<(), &str>("disk full") })
            .await;
        assert_eq!(failed, Err("disk full"));
        assert!(!c.token().is_cancelled(), "not saved: it still runs later");
        assert_eq!(c.cancel_queued(saved()).await, Ok(Ok(Canceled::Queued)));
        assert!(!c.start().await, "a canceled deployment never starts");

        // The engine's shutdown cancels the parent token: a queued deployment does not start.
        let parent = CancellationToken::new();
        let c = Control::new(parent.child_token());
        parent.cancel();
        assert!(!c.start().await);
    }
}
