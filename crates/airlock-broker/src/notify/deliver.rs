//! Getting one notice to one channel: the signed POST, retries with backoff, and the audit record
//! of how it ended.
//!
//! Each channel has its own [`Worker`], which delivers its queue one notice at a time, in order,
//! so a slow or broken channel holds up only itself. A delivery keeps its id and body on every
//! attempt; each attempt is stamped and signed anew:
//!
//! ```text
//! X-Airlock-Delivery:  <uuid v4, the same on every attempt>
//! X-Airlock-Timestamp: <unix seconds of this attempt>
//! X-Airlock-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>
//! ```
//!
//! Network errors, 429 and 5xx are retried ([`RetryPolicy`]); any other answer is final. The
//! final outcome is appended to the audit chain (`notification.delivered` or
//! `notification.failed`) and counted. Neither a channel's URL nor its secret is ever logged or
//! recorded: a Slack webhook URL is itself a credential, so even transport errors are scrubbed
//! of it.

use std::time::Duration;

use airlock_core::audit::{AuditEvent, EventKind, SYSTEM_ACTOR};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::format::{self, Format};
use super::notice::{Notice, NoticeKind};
use crate::Broker;
use crate::metrics::NOTIFICATIONS;

/// After shutdown begins, what is still queued gets one last attempt each, for this long in all;
/// what is left after it is recorded as not sent.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How each notice is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt; each later wait doubles.
    pub first_delay: Duration,
    /// No wait is longer, whatever a `Retry-After` asks.
    pub max_delay: Duration,
    /// Attempts in all, the first one included.
    pub attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { first_delay: Duration::from_secs(1), max_delay: Duration::from_secs(60), attempts: 6 }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (from 1), at least what the receiver asked.
    fn delay(&self, attempt: u32, asked: Option<Duration>) -> Duration {
        let doubled = self.first_delay.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        doubled.max(asked.unwrap_or_default()).min(self.max_delay)
    }
}

/// A channel ready to send: where, how, and the key that signs.
pub(super) struct Channel {
    pub(super) name: String,
    pub(super) format: Format,
    pub(super) url: reqwest::Url,
    pub(super) secret: Vec<u8>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("name", &self.name).field("format", &self.format).finish_non_exhaustive()
    }
}

/// One notice on its way to one channel.
#[derive(Debug)]
pub(super) struct Delivery {
    id: Uuid,
    kind: NoticeKind,
    subject: Vec<(&'static str, String)>,
    body: String,
}

impl Delivery {
    pub(super) fn new(notice: &Notice, format: Format) -> Self {
        let id = Uuid::new_v4();
        Self { id, kind: notice.kind, subject: notice.subject.clone(), body: format::body(format, notice, id) }
    }
}

/// How a delivery ended.
#[derive(Debug)]
struct Outcome {
    attempts: u32,
    /// The receiver's last answer, if there was one.
    status: Option<u16>,
    /// Why it was not delivered; none: delivered.
    error: Option<String>,
}

/// Why one attempt did not deliver.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("the receiver answered {status}")]
    Refused { status: StatusCode, retry_after: Option<Duration> },
    #[error("{0}")]
    Transport(String),
    #[error("not sent: the broker stopped")]
    Stopped,
    #[error("the broker stopped before the receiver answered")]
    Unanswered,
}

impl AttemptError {
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Refused { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            AttemptError::Transport(_) => true,
            AttemptError::Stopped | AttemptError::Unanswered => false,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Refused { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Delivers one channel's queue, in order, until the queue is closed and empty.
pub(super) struct Worker {
    channel: Channel,
    client: reqwest::Client,
    broker: Broker,
    retry: RetryPolicy,
    /// Turns true at shutdown.
    stop: watch::Receiver<bool>,
    /// When the last attempts after shutdown must be over; none before shutdown.
    grace_ends: Option<Instant>,
}

impl Worker {
    pub(super) fn new(
        channel: Channel,
        client: reqwest::Client,
        broker: Broker,
        retry: RetryPolicy,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self { channel, client, broker, retry, stop, grace_ends: None }
    }

    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<Delivery>) {
        while let Some(delivery) = queue.recv().await {
            let outcome = self.deliver(&delivery).await;
            self.record(&delivery, &outcome).await;
        }
    }

    /// The end of the grace period, once shutdown has begun.
    fn grace_end(&mut self) -> Option<Instant> {
        if self.grace_ends.is_none() && *self.stop.borrow() {
            self.grace_ends = Some(Instant::now() + SHUTDOWN_GRACE);
        }
        self.grace_ends
    }

    async fn deliver(&mut self, delivery: &Delivery) -> Outcome {
        let mut attempts = 0;
        loop {
            let grace_end = self.grace_end();
            if grace_end.is_some_and(|end| Instant::now() >= end) {
                return Outcome { attempts, status: None, error: Some(AttemptError::Stopped.to_string()) };
            }
            attempts += 1;
            let sent = match grace_end {
                Some(end) => {
                    tokio::time::timeout_at(end, self.attempt(delivery)).await.unwrap_or(Err(AttemptError::Unanswered))
                }
                None => self.attempt(delivery).await,
            };
            let error = match sent {
                Ok(status) => return Outcome { attempts, status: Some(status), error: None },
                Err(error) => error,
            };
            if !error.retryable() || attempts >= self.retry.attempts || grace_end.is_some() {
                return Outcome { attempts, status: error.status(), error: Some(error.to_string()) };
            }
            let delay = self.retry.delay(attempts, error.retry_after());
            tracing::warn!(
                channel = %self.channel.name, notice = delivery.kind.as_str(), delivery = %delivery.id, attempts, %error,
                retry_in = ?delay, "a notification was not delivered; retrying"
            );
            // Shutdown cuts the wait short: the next attempt is the last.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.wait_for(|stop| *stop) => {}
            }
        }
    }

    async fn attempt(&self, delivery: &Delivery) -> Result<u16, AttemptError> {
        let timestamp = self.broker.clock().now().unix_timestamp();
        let response = self
            .client
            .post(self.channel.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .header("X-Airlock-Delivery", delivery.id.to_string())
            .header("X-Airlock-Timestamp", timestamp.to_string())
            .header("X-Airlock-Signature", signature(&self.channel.secret, timestamp, &delivery.body))
            .body(delivery.body.clone())
            .send()
            .await
            .map_err(|error| AttemptError::Transport(transport_error(&error, &self.channel.url)))?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(AttemptError::Refused { status, retry_after: retry_after(response.headers()) })
        }
    }

    /// Counts the outcome and appends it to the audit chain. A record that cannot be written is
    /// logged: the change the notice was about stands either way.
    async fn record(&self, delivery: &Delivery, outcome: &Outcome) {
        let channel = &self.channel.name;
        let subject: Map<String, Value> =
            delivery.subject.iter().map(|(what, id)| ((*what).to_owned(), Value::from(id.as_str()))).collect();
        let mut details = json!({
            "channel": channel,
            "notice": delivery.kind.as_str(),
            "delivery": delivery.id,
            "subject": subject,
            "attempts": outcome.attempts,
            "status": outcome.status,
        });
        let kind = match &outcome.error {
            None => {
                tracing::debug!(%channel, notice = delivery.kind.as_str(), delivery = %delivery.id, "notification delivered");
                EventKind::NotificationDelivered
            }
            Some(error) => {
                tracing::warn!(
                    %channel, notice = delivery.kind.as_str(), delivery = %delivery.id, attempts = outcome.attempts,
                    %error, "a notification could not be delivered"
                );
                details["error"] = Value::from(error.as_str());
                EventKind::NotificationFailed
            }
        };
        let label = if outcome.error.is_none() { "delivered" } else { "failed" };
        metrics::counter!(NOTIFICATIONS, "channel" => channel.clone(), "outcome" => label).increment(1);
        let event = AuditEvent { kind, actor: SYSTEM_ACTOR.to_owned(), at: self.broker.clock().now(), details };
        if let Err(error) = self.broker.record(&[event]).await {
            tracing::error!(%channel, delivery = %delivery.id, %error, "cannot record a notification's outcome");
        }
    }
}

/// `v1=` and the hex HMAC-SHA256 of `{timestamp}.{body}` under `secret`.
fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// `Retry-After` in seconds (its date form is not used by webhook services).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds))
}

/// What went wrong on the way, with its causes, and never the URL: it may hold a credential.
fn transport_error(error: &reqwest::Error, url: &reqwest::Url) -> String {
    let mut text = if error.is_timeout() { "timed out".to_owned() } else { "cannot send".to_owned() };
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    scrub(text, url)
}

/// `text` without `url`, its path or its query, wherever they appear.
fn scrub(mut text: String, url: &reqwest::Url) -> String {
    let secrets = [Some(url.as_str()), Some(url.path()).filter(|path| path.len() > 1), url.query()];
    for secret in secrets.into_iter().flatten().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_up_to_the_cap_and_honour_retry_after() {
        let retry = RetryPolicy::default();
        let waits: Vec<u64> = (1..=8).map(|attempt| retry.delay(attempt, None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry.delay(1, Some(Duration::from_secs(30))), Duration::from_secs(30));
        assert_eq!(retry.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(60));
        assert_eq!(retry.delay(u32::MAX, None), Duration::from_secs(60), "no overflow");
    }

    #[test]
    fn only_network_errors_429_and_5xx_are_retried() {
        let refused = |code| AttemptError::Refused { status: StatusCode::from_u16(code).unwrap(), retry_after: None };
        let retried: Vec<u16> =
            [400, 401, 404, 410, 429, 500, 502, 503].into_iter().filter(|code| refused(*code).retryable()).collect();
        assert_eq!(retried, [429, 500, 502, 503]);
        assert!(AttemptError::Transport("cannot send".into()).retryable());
        assert!(!AttemptError::Stopped.retryable() && !AttemptError::Unanswered.retryable());
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // Computed apart: python3 -c 'import hmac,hashlib; print(hmac.new(b"Jefe", b"1700000000.{}",
        // hashlib.sha256).hexdigest())'
        let expected = "v1=d3793e2b4103edfbd98cc19591832f5fad701d413db9fcae0ae7dab8184ed207";
        assert_eq!(signature(b"Jefe", 1_700_000_000, "{}"), expected);
        assert_ne!(signature(b"Jefe", 1_700_000_001, "{}"), expected, "the timestamp is signed");
    }

    #[test]
    fn transport_errors_never_show_the_url() {
        let url = reqwest::Url::parse("https://hooks.example.com/services/T0/B0/s3cr3t?token=abc").unwrap();
        let text = format!("error for {url}: path /services/T0/B0/s3cr3t refused, token=abc");
        assert_eq!(scrub(text, &url), "error for <redacted>: path <redacted> refused, <redacted>");
    }
}
