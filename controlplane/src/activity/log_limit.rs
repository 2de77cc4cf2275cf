//! Rate limiting for warnings. When Redis is down every publish fails, and
//! one log line per failure would flood the logs exactly when they matter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one warning through per interval and counts the ones it holds back,
/// so the next warning can say how many were suppressed. Lock-free because
/// [`ActivityBus::publish`](super::ActivityBus::publish) calls it from any
/// thread and must never wait.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    origin: Instant,
    interval_ms: u64,
    /// Milliseconds since `origin` before which nothing is logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            origin: Instant::now(),
            interval_ms: millis(interval),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when the caller should log now, with the number of
    /// warnings held back since the last one; `None` when it should not.
    pub(crate) fn check(&self) -> Option<u64> {
        let now = millis(self.origin.elapsed());
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_the_first_through_then_counts_the_suppressed() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), None);
        assert_eq!(limiter.check(), None);
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn lets_one_through_again_after_the_interval() {
        let limiter = LogLimiter::new(Duration::ZERO);
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), Some(0));
    }
}
