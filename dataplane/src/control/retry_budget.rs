//! How many calls may move to another control plane: a bound over all calls, so that a fleet
//! whose control planes all fail is not asked for several streams per call (the "retry storm"
//! that turns an outage into an overload).
//!
//! Each call opened deposits a fifth of a retry; every second adds a floor of ten, so that
//! a quiet data plane can still retry. The balance is capped at what a minute of the floor
//! would give, so a long quiet spell cannot bank a storm. Each call also tries at most
//! `--control-plane-retries` other control planes.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A retry's cost in the balance's units; a call deposits a fifth of it.
const RETRY: u64 = 5;
const DEPOSIT_PER_CALL: u64 = 1;
/// Retries the floor adds per second, and the most the balance holds.
const FLOOR_PER_SECOND: u64 = 10;
const MAX_BALANCE: u64 = 60 * FLOOR_PER_SECOND * RETRY;

#[derive(Debug)]
pub struct RetryBudget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    balance: u64,
    /// When the floor was last added.
    refilled: Instant,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                balance: FLOOR_PER_SECOND * RETRY,
                refilled: Instant::now(),
            }),
        }
    }
}

impl RetryBudget {
    /// A call was opened.
    pub fn deposit(&self) {
        let mut state = self.lock();
        state.balance = (state.balance + DEPOSIT_PER_CALL).min(MAX_BALANCE);
    }

    /// Whether a call may move to another control plane now; it spends from the budget if so.
    pub fn withdraw(&self) -> bool {
        let mut state = self.lock();
        let elapsed = state.refilled.elapsed();
        let whole_seconds = elapsed.as_secs();
        if whole_seconds > 0 {
            state.balance =
                (state.balance + whole_seconds * FLOOR_PER_SECOND * RETRY).min(MAX_BALANCE);
            state.refilled += Duration::from_secs(whole_seconds);
        }
        if state.balance >= RETRY {
            state.balance -= RETRY;
            true
        } else {
            false
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_fifth_of_calls_plus_a_floor() {
        let budget = RetryBudget::default();
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 10, "the floor's first second");
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 20, "a fifth of 100 calls");
        tokio::time::advance(Duration::from_secs(2)).await;
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 20, "two seconds of the floor");
        tokio::time::advance(Duration::from_secs(3600)).await;
        let granted = (0..10_000).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 600, "a quiet hour banks a minute of the floor");
    }
}
