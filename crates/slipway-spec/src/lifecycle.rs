//! The phases of a deployment and the events that move it: the one function that decides
//! every move ([`next`]). What a cancel does in each stage of a run is the engine's
//! (`slipway_engine`'s `lifecycle` module, and docs/architecture.md).
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
//! ERROR, CANCELED and SUPERSEDED are final; every other move is refused.

use crate::Phase;

/// What moves a deployment from one phase to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Built,
    Deploy,
    Activate,
    Replace,
    Supersede,
    Fail,
    Cancel,
}

/// A move the lifecycle does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a deployment in {from} cannot take the event {event:?}")]
pub struct Refused {
    pub from: Phase,
    pub event: Event,
}

/// The phase `event` moves a deployment in `from` to; every move not in the table is
/// refused.
pub fn next(from: Phase, event: Event) -> Result<Phase, Refused> {
    use Event as E;
    use Phase as P;
    let to = match (from, event) {
        (P::PendingBuild, E::Start) => P::Building,
        (P::Building, E::Built) => P::PendingDeploy,
        (P::PendingDeploy, E::Deploy) => P::Deploying,
        (P::Deploying, E::Activate) => P::Active,
        (P::Active, E::Replace) => P::Superseded,
        (P::PendingBuild | P::PendingDeploy, E::Supersede) => P::Superseded,
        (from, E::Fail) if from.is_in_progress() => P::Error,
        (from, E::Cancel) if from.is_in_progress() => P::Canceled,
        _ => return Err(Refused { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHASES: [Phase; 9] = [
        Phase::Unknown,
        Phase::PendingBuild,
        Phase::Building,
        Phase::PendingDeploy,
        Phase::Deploying,
        Phase::Active,
        Phase::Superseded,
        Phase::Error,
        Phase::Canceled,
    ];
    const EVENTS: [Event; 8] = [
        Event::Start,
        Event::Built,
        Event::Deploy,
        Event::Activate,
        Event::Replace,
        Event::Supersede,
        Event::Fail,
        Event::Cancel,
    ];

    #[test]
    fn the_table_has_exactly_the_documented_moves() {
        use Phase as P;
        let mut allowed = Vec::new();
        for from in PHASES {
            for event in EVENTS {
                if let Ok(to) = next(from, event) {
                    allowed.push((from, event, to));
                }
            }
        }
        let mut expected = vec![
            (P::PendingBuild, Event::Start, P::Building),
            (P::Building, Event::Built, P::PendingDeploy),
            (P::PendingDeploy, Event::Deploy, P::Deploying),
            (P::Deploying, Event::Activate, P::Active),
            (P::Active, Event::Replace, P::Superseded),
            (P::PendingBuild, Event::Supersede, P::Superseded),
            (P::PendingDeploy, Event::Supersede, P::Superseded),
        ];
        for from in [P::PendingBuild, P::Building, P::PendingDeploy, P::Deploying] {
            expected.push((from, Event::Fail, P::Error));
            expected.push((from, Event::Cancel, P::Canceled));
        }
        let key = |m: &(Phase, Event, Phase)| format!("{m:?}");
        allowed.sort_by_key(key);
        expected.sort_by_key(key);
        assert_eq!(allowed, expected);
    }

    #[test]
    fn final_phases_never_move_and_nothing_reaches_active_but_a_deploying_deployment() {
        for from in [Phase::Superseded, Phase::Error, Phase::Canceled] {
            for event in EVENTS {
                assert_eq!(next(from, event), Err(Refused { from, event }));
            }
        }
        for from in PHASES {
            for event in EVENTS {
                if next(from, event) == Ok(Phase::Active) {
                    assert_eq!((from, event), (Phase::Deploying, Event::Activate));
                }
            }
        }
    }
}
