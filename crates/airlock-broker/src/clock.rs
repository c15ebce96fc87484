//! Where time comes from. The broker reads time only through a [`Clock`], so tests move it by hand.

use std::future::Future;
use std::pin::Pin;

use time::OffsetDateTime;
use tokio::sync::watch;

/// A source of the current time and of waiting for a later one.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
    /// Completes at or after `deadline`.
    fn sleep_until(&self, deadline: OffsetDateTime) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Every stored time has millisecond precision; so does every time the broker reads.
fn to_ms(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1_000_000 * 1_000_000).expect("a truncated nanosecond is in range")
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        to_ms(OffsetDateTime::now_utc())
    }

    fn sleep_until(&self, deadline: OffsetDateTime) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let wait = (deadline - self.now()).max(time::Duration::ZERO);
        Box::pin(tokio::time::sleep(wait.unsigned_abs()))
    }
}

/// A clock that only moves when told to: for tests of everything that depends on time.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<OffsetDateTime>,
}

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self { now: watch::Sender::new(to_ms(start)) }
    }

    pub fn advance(&self, by: time::Duration) {
        self.now.send_modify(|now| *now = to_ms(*now + by));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: OffsetDateTime) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            let _ = now.wait_for(|now| *now >= deadline).await;
        })
    }
}
