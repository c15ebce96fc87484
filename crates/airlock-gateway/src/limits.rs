//! The gateway's front door: how long a connection may take to log in, how many may be logging
//! in at once, and how many failed logins one source may make before it is refused for a while.
//!
//! The first two bound what unauthenticated clients hold (a task, a socket, a TLS session):
//! [`Settings::startup_timeout`](crate::gateway::Settings) closes a connection that has not shown
//! a valid credential in time, and a connection over
//! [`Settings::max_pending_logins`](crate::gateway::Settings) is refused at once.
//!
//! [`Failures`] counts failed logins (a credential that does not verify) per source address. A
//! source that fails [`FailureLimit::max_failures`] times within [`FailureLimit::window`] is
//! refused for one window, before its credential is read, whatever it sends (a valid credential
//! included). Refusals of a limited source are counted, not recorded one by one: [`Failures`]
//! hands out one [`Summary`] per limited window. It is a plain value with no clock: every call
//! takes `now`. IPv6 sources are counted by their /64, which one host usually holds whole.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use tokio::time::Instant;

/// Sources tracked at once by default; beyond it, the oldest are forgotten.
pub const DEFAULT_MAX_SOURCES: usize = 10_000;

/// When failed logins from one source stop being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimit {
    /// Failed logins within `window` after which the source is refused for a `window`; 0 turns
    /// the limit off.
    pub max_failures: u32,
    pub window: Duration,
    /// Sources remembered at once, at most; the oldest is forgotten to make room.
    pub max_sources: usize,
}

impl Default for FailureLimit {
    fn default() -> Self {
        Self { max_failures: 10, window: Duration::from_secs(60), max_sources: DEFAULT_MAX_SOURCES }
    }
}

/// Where logins come from, as the limit counts them: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX)))),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// A source that is refused until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub until: Instant,
}

/// How many logins a limited source had refused during its limit, to be recorded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub source: Source,
    pub refused: u64,
}

/// One source's failures in its current window.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The first failure of the window.
    since: Instant,
    failures: u32,
    limited_until: Option<Instant>,
    /// Logins refused while limited, not yet summarised.
    refused: u64,
}

impl Entry {
    /// Whether the entry says nothing about `now` any more (its window or its limit is over).
    fn is_over(&self, now: Instant, window: Duration) -> bool {
        match self.limited_until {
            Some(until) => now >= until,
            None => now >= self.since + window,
        }
    }
}

/// Failed logins by source; see the module documentation.
#[derive(Debug)]
pub struct Failures {
    limit: FailureLimit,
    sources: HashMap<Source, Entry>,
    /// Summaries of entries that ended before [`Failures::take_ended`] came by.
    finished: Vec<Summary>,
}

impl Failures {
    pub fn new(limit: FailureLimit) -> Self {
        Self { limit, sources: HashMap::new(), finished: Vec::new() }
    }

    /// Whether `source` may try to log in at `now`; a refusal is counted for its summary.
    pub fn check(&mut self, source: Source, now: Instant) -> Result<(), Limited> {
        match self.sources.get_mut(&source) {
            Some(entry) => match entry.limited_until {
                Some(until) if now < until => {
                    entry.refused += 1;
                    Err(Limited { until })
                }
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Counts a failed login from `source` at `now`; the one that reaches the limit starts it.
    pub fn failed(&mut self, source: Source, now: Instant) {
        if self.limit.max_failures == 0 || self.limit.max_sources == 0 {
            return;
        }
        let window = self.limit.window;
        if self.sources.get(&source).is_none_or(|entry| entry.is_over(now, window)) {
            self.retire(source);
            self.make_room(now);
            self.sources.insert(source, Entry { since: now, failures: 0, limited_until: None, refused: 0 });
        }
        if let Some(entry) = self.sources.get_mut(&source) {
            entry.failures = entry.failures.saturating_add(1);
            if entry.failures >= self.limit.max_failures && entry.limited_until.is_none() {
                entry.limited_until = Some(now + window);
            }
        }
    }

    /// Forgets the sources whose window or limit is over at `now`, and returns the summaries of
    /// the limits that refused logins.
    pub fn take_ended(&mut self, now: Instant) -> Vec<Summary> {
        let window = self.limit.window;
        let ended: Vec<Source> =
            self.sources.iter().filter(|(_, entry)| entry.is_over(now, window)).map(|(source, _)| *source).collect();
        for source in ended {
            self.retire(source);
        }
        std::mem::take(&mut self.finished)
    }

    /// Forgets every source, and returns the summaries of every limit that refused logins (at
    /// shutdown).
    pub fn take_all(&mut self) -> Vec<Summary> {
        let all: Vec<Source> = self.sources.keys().copied().collect();
        for source in all {
            self.retire(source);
        }
        std::mem::take(&mut self.finished)
    }

    /// How many sources are remembered.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Forgets `source`, keeping the summary of its refusals.
    fn retire(&mut self, source: Source) {
        let Some(entry) = self.sources.remove(&source) else { return };
        if entry.refused == 0 {
            return;
        }
        // Summaries are taken every second; this many waiting means nobody is taking them.
        if self.finished.len() >= self.limit.max_sources {
            tracing::warn!(%source, refused = entry.refused, "too many login-limit summaries waiting; one dropped");
            return;
        }
        self.finished.push(Summary { source, refused: entry.refused });
    }

    /// Makes room for one more source: forgets those that are over, then the oldest. A linear
    /// pass, made only when full: it costs less than the TLS handshake each failure took.
    fn make_room(&mut self, now: Instant) {
        if self.sources.len() < self.limit.max_sources {
            return;
        }
        let window = self.limit.window;
        let over: Vec<Source> =
            self.sources.iter().filter(|(_, entry)| entry.is_over(now, window)).map(|(source, _)| *source).collect();
        for source in over {
            self.retire(source);
        }
        while self.sources.len() >= self.limit.max_sources {
            let oldest = self.sources.iter().min_by_key(|(_, entry)| entry.since).map(|(source, _)| *source);
            match oldest {
                Some(source) => self.retire(source),
                None => break,
            }
        }
    }
}

/// `duration` as people read it in a message: whole seconds, or milliseconds below one.
pub fn spoken(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limit(max_failures: u32, max_sources: usize) -> FailureLimit {
        FailureLimit { max_failures, window: MINUTE, max_sources }
    }

    fn ip(text: &str) -> Source {
        Source::of(text.parse().unwrap())
    }

    #[test]
    fn a_source_is_limited_after_n_failures_within_the_window_and_free_after_it() {
        let t0 = Instant::now();
        let mut failures = Failures::new(limit(3, 100));
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for second in 0..2 {
            failures.failed(a, t0 + Duration::from_secs(second));
            assert_eq!(failures.check(a, t0 + Duration::from_secs(second)), Ok(()));
        }
        failures.failed(a, t0 + Duration::from_secs(10));
        let until = t0 + Duration::from_secs(10) + MINUTE;
        assert_eq!(failures.check(a, t0 + Duration::from_secs(11)), Err(Limited { until }));
        assert_eq!(failures.check(b, t0 + Duration::from_secs(11)), Ok(()), "other sources are not limited");
        for _ in 0..4 {
            assert!(failures.check(a, t0 + Duration::from_secs(30)).is_err());
        }
        assert_eq!(failures.take_ended(until - Duration::from_millis(1)), [], "nothing ends early");
        assert_eq!(failures.check(a, until), Ok(()), "the limit lasts one window");
        assert_eq!(failures.take_ended(until), [Summary { source: a, refused: 5 }], "one summary for the window");
        assert!(failures.is_empty());
        assert_eq!(failures.take_ended(until + MINUTE), [], "and only one");
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_limit() {
        let t0 = Instant::now();
        let mut failures = Failures::new(limit(3, 100));
        let a = ip("192.0.2.1");
        for minute in 0..10 {
            let at = t0 + MINUTE * minute;
            failures.failed(a, at);
            failures.failed(a, at + Duration::from_secs(1));
            assert_eq!(failures.check(a, at + Duration::from_secs(2)), Ok(()), "minute {minute}");
        }
        assert_eq!(failures.take_ended(t0 + MINUTE * 20), []);
    }

    #[test]
    fn a_failure_after_the_limit_ends_starts_a_new_window_and_keeps_the_old_summary() {
        let t0 = Instant::now();
        let mut failures = Failures::new(limit(2, 100));
        let a = ip("192.0.2.1");
        failures.failed(a, t0);
        failures.failed(a, t0);
        assert!(failures.check(a, t0).is_err());
        // No sweep came by: the next failure after the limit retires it itself.
        failures.failed(a, t0 + MINUTE);
        assert_eq!(failures.check(a, t0 + MINUTE), Ok(()), "one failure of the new window");
        assert_eq!(failures.take_ended(t0 + MINUTE), [Summary { source: a, refused: 1 }]);
        assert_eq!(failures.len(), 1, "the new window is still counting");
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_source_is_forgotten() {
        let t0 = Instant::now();
        let mut failures = Failures::new(limit(1, 3));
        for (second, source) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].into_iter().enumerate() {
            failures.failed(ip(source), t0 + Duration::from_secs(second as u64));
        }
        assert!(failures.check(ip("192.0.2.1"), t0 + Duration::from_secs(5)).is_err());
        failures.failed(ip("192.0.2.4"), t0 + Duration::from_secs(5));
        assert_eq!(failures.len(), 3);
        assert_eq!(failures.check(ip("192.0.2.1"), t0 + Duration::from_secs(6)), Ok(()), "the oldest is forgotten");
        assert!(failures.check(ip("192.0.2.4"), t0 + Duration::from_secs(6)).is_err());
        let ended = failures.take_ended(t0 + Duration::from_secs(6));
        assert_eq!(ended, [Summary { source: ip("192.0.2.1"), refused: 1 }], "its refusals are still told");
        let all = failures.take_all();
        assert_eq!(all, [Summary { source: ip("192.0.2.4"), refused: 1 }]);
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let t0 = Instant::now();
        let mut failures = Failures::new(limit(0, 100));
        for _ in 0..100 {
            failures.failed(ip("192.0.2.1"), t0);
        }
        assert_eq!(failures.check(ip("192.0.2.1"), t0), Ok(()));
        assert!(failures.is_empty());
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::2"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_eq!(ip("192.0.2.1").to_string(), "192.0.2.1");
    }

    #[test]
    fn durations_are_spoken_in_seconds_or_milliseconds() {
        assert_eq!(spoken(Duration::from_secs(10)), "10 s");
        assert_eq!(spoken(Duration::from_millis(300)), "300 ms");
        assert_eq!(spoken(Duration::from_millis(1500)), "1.5 s");
    }
}
