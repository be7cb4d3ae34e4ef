//! `WarnBudget`: at most so many warnings of one kind a minute. A peer that connects in a loop
//! with a bad certificate (or sends garbage) would otherwise write a log line per attempt, as
//! fast as it can connect; past the budget the warnings are counted, and the next one let
//! through says how many were held back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The length of a budget's window.
const WINDOW: Duration = Duration::from_secs(60);

pub(crate) struct WarnBudget {
    per_window: u32,
    /// The window's start, warnings let through in it, and warnings held back since the last
    /// one let through.
    state: Mutex<Option<(Instant, u32, u64)>>,
}

impl WarnBudget {
    pub(crate) const fn new(per_window: u32) -> Self {
        Self {
            per_window,
            state: Mutex::new(None),
        }
    }

    /// `Some(held back before it)` if a warning at `now` may be logged; `None` if it is over
    /// the budget (it is counted).
    pub(crate) fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, let_through, held_back) = state.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= WINDOW {
            (*start, *let_through) = (now, 0);
        }
        if *let_through >= self.per_window {
            *held_back += 1;
            return None;
        }
        *let_through += 1;
        Some(std::mem::take(held_back))
    }

    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_budget_warnings_are_counted_and_reported_with_the_next_one() {
        let budget = WarnBudget::new(3);
        let start = Instant::now();
        let admitted: Vec<Option<u64>> = (0..5).map(|_| budget.admit_at(start)).collect();
        assert_eq!(admitted, [Some(0), Some(0), Some(0), None, None]);
        let later = start + WINDOW;
        assert_eq!(
            budget.admit_at(later),
            Some(2),
            "the two held back are reported"
        );
        assert_eq!(budget.admit_at(later), Some(0));
    }
}
