//! The pure decision at the centre of a rollout: given how many instances are in which state,
//! how many new ones to start and how many old ones to stop now.
//!
//! Invariants, for bounds `(target, max_surge, max_unavailable)`:
//! - instances that exist (ready, starting or stopping) never exceed
//!   `max(target + max_surge, instances at the start)`;
//! - ready instances never drop below `min(target - max_unavailable, ready at the start)`;
//! - the rollout ends with exactly `target` new instances ready and no old instance left.

/// The resolved bounds of one component's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// `instance_count` of the new version.
    pub target: u32,
    pub max_surge: u32,
    pub max_unavailable: u32,
}

impl Bounds {
    /// Bounds that can always make progress: when both are 0, one instance may be unavailable.
    pub fn new(target: u32, max_surge: u32, max_unavailable: u32) -> Self {
        let max_unavailable = if max_surge == 0 && max_unavailable == 0 {
            1
        } else {
            max_unavailable
        };
        Bounds {
            target,
            max_surge,
            max_unavailable: max_unavailable.min(target),
        }
    }

    /// The ready instances the rollout keeps at the least.
    pub fn min_ready(&self) -> u32 {
        self.target.saturating_sub(self.max_unavailable)
    }

    /// The instances that may exist at the most.
    pub fn max_total(&self) -> u32 {
        self.target + self.max_surge
    }
}

/// How many instances of a component are in which state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Old instances still serving.
    pub old_ready: u32,
    /// Old instances taken out of service and being stopped (they still exist).
    pub old_stopping: u32,
    /// New instances started and not yet ready.
    pub new_starting: u32,
    /// New instances that passed their readiness check.
    pub new_ready: u32,
}

impl Counts {
    pub fn total(&self) -> u32 {
        self.old_ready + self.old_stopping + self.new_starting + self.new_ready
    }
    pub fn ready(&self) -> u32 {
        self.old_ready + self.new_ready
    }
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start `start` new instances and stop `stop` old ones (either may be 0); then wait for
    /// one of the operations under way to finish.
    Act { start: u32, stop: u32 },
    /// Nothing can be done until an operation under way finishes.
    Wait,
    /// The rollout is complete.
    Done,
}

/// Decides the next step. Pure: the same counts always give the same step.
pub fn next_step(bounds: Bounds, c: Counts) -> Step {
    if c.old_ready == 0
        && c.old_stopping == 0
        && c.new_starting == 0
        && c.new_ready >= bounds.target
    {
        return Step::Done;
    }
    // Old instances may go as long as enough stay ready; any beyond the target may go as soon
    // as enough new ones are ready.
    let spare = c.ready().saturating_sub(bounds.min_ready());
    let stop = c.old_ready.min(spare);
    // New instances may start while there is room under the surge bound.
    let wanted = bounds.target.saturating_sub(c.new_starting + c.new_ready);
    let room = bounds.max_total().saturating_sub(c.total());
    let start = wanted.min(room);
    if start == 0 && stop == 0 {
        Step::Wait
    } else {
        Step::Act { start, stop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Simulates a rollout where operations finish in an order chosen by `picks`, checking the
    /// invariants after every transition.
    fn simulate(bounds: Bounds, initial: u32, picks: &[u8]) -> Counts {
        let mut c = Counts {
            old_ready: initial,
            ..Counts::default()
        };
        let max_total = bounds.max_total().max(initial);
        let min_ready = bounds.min_ready().min(initial);
        let mut pick = picks.iter().cycle();
        for _ in 0..10_000 {
            match next_step(bounds, c) {
                Step::Done => return c,
                Step::Act { start, stop } => {
                    c.new_starting += start;
                    c.old_ready -= stop;
                    c.old_stopping += stop;
                }
                Step::Wait => {
                    // Finish one operation under way.
                    let choices = [c.new_starting > 0, c.old_stopping > 0];
                    let p = *pick.next().unwrap_or(&0);
                    let starting_first = p.is_multiple_of(2);
                    match (choices, starting_first) {
                        ([true, _], true) | ([true, false], false) => {
                            c.new_starting -= 1;
                            c.new_ready += 1;
                        }
                        ([_, true], _) => c.old_stopping -= 1,
                        _ => panic!("waiting with nothing under way: {bounds:?} {c:?}"),
                    }
                }
            }
            assert!(
                c.total() <= max_total,
                "too many instances: {bounds:?} {c:?}"
            );
            assert!(c.ready() >= min_ready, "too few ready: {bounds:?} {c:?}");
        }
        panic!("rollout did not finish: {bounds:?} {c:?}");
    }

    #[test]
    fn default_bounds_start_one_new_before_stopping_one_old() {
        let b = Bounds::new(3, 1, 0);
        let c = Counts {
            old_ready: 3,
            ..Counts::default()
        };
        assert_eq!(next_step(b, c), Step::Act { start: 1, stop: 0 });
        let c = Counts {
            old_ready: 3,
            new_starting: 1,
            ..Counts::default()
        };
        assert_eq!(next_step(b, c), Step::Wait);
        let c = Counts {
            old_ready: 3,
            new_ready: 1,
            ..Counts::default()
        };
        assert_eq!(next_step(b, c), Step::Act { start: 0, stop: 1 });
    }

    #[test]
    fn zero_surge_stops_before_starting() {
        let b = Bounds::new(2, 0, 1);
        let c = Counts {
            old_ready: 2,
            ..Counts::default()
        };
        assert_eq!(next_step(b, c), Step::Act { start: 0, stop: 1 });
    }

    #[test]
    fn both_bounds_zero_still_progress() {
        let b = Bounds::new(2, 0, 0);
        assert_eq!(b.max_unavailable, 1);
        let end = simulate(b, 2, &[0, 1]);
        assert_eq!(end.new_ready, 2);
    }

    proptest! {
        #[test]
        fn bounds_hold_and_every_instance_ends_new(
            target in 1u32..12,
            initial in 0u32..12,
            surge in 0u32..5,
            unavailable in 0u32..5,
            picks in proptest::collection::vec(any::<u8>(), 1..32),
        ) {
            let b = Bounds::new(target, surge, unavailable);
            let end = simulate(b, initial, &picks);
            prop_assert_eq!(end, Counts { new_ready: target, ..Counts::default() });
        }
    }
}
