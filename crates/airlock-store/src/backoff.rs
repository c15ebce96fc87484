//! How long a background loop waits after failing: the one back-off every loop of the store
//! and the broker uses, so that a failing disk or store is retried at a falling rate instead of
//! in a spin, and at full speed again after the first success.
//!
//! It lives here, in the lowest crate with a loop of its own (the write-ahead log checkpoint),
//! and knows nothing of what failed.

use std::time::Duration;

/// Waits after consecutive failures: `first`, doubling with each failure in a row up to `cap`;
/// a success starts again from `first`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
    failures: u32,
}

impl Default for Backoff {
    /// 100 ms doubling to 10 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap, next: first, failures: 0 }
    }

    /// Counts a failure; returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// Counts a failure and waits as long as [`Backoff::failed`] says.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.failed()).await;
    }

    /// A success: the next failure waits `first` again.
    pub fn succeeded(&mut self) {
        self.next = self.first;
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_cap_and_start_again_after_a_success() {
        let mut backoff = Backoff::default();
        let mut waited = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            backoff.wait().await;
            waited.push(started.elapsed().as_millis());
        }
        assert_eq!(waited, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(backoff.failures(), 10);

        backoff.succeeded();
        assert_eq!(backoff.failures(), 0);
        let started = Instant::now();
        backoff.wait().await;
        assert_eq!(started.elapsed(), Duration::from_millis(100), "a success starts again from the first wait");
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_always_fails_tries_a_few_times_a_minute_not_hundreds_a_second() {
        let mut backoff = Backoff::default();
        let (started, mut attempts) = (Instant::now(), 0);
        while started.elapsed() < Duration::from_secs(60) {
            attempts += 1;
            backoff.wait().await;
        }
        // 100 ms … 6.4 s take 12.7 s; then one attempt every 10 s.
        assert_eq!(attempts, 12);
    }
}
