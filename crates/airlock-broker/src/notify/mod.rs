//! Webhook notifications people act on: a request needs review, a request was decided, a grant
//! started, ends soon or ended, break-glass was used or its review is overdue, an incident opened
//! or closed (docs/notifications.md).
//!
//! Where notices come from: committed audit records. The store tells [`Notifier::observer`] of
//! every commit; the observer keeps only records of kinds that make notices (a comparison per
//! record: a gateway commit holds thousands of statements) and hands them on with `try_send`
//! into a bounded queue. It never waits: when the queue is full the notices are dropped, logged
//! and counted, and the commit goes on. `grant_ending` comes from a periodic pass over the live
//! grants (`ending`).
//!
//! Layout:
//! - [`Notifier::run`]: makes notices of each commit's records, routes each to the channels
//!   whose routes match it (kind, resource, environment), and hands it to each channel's queue;
//! - `notice`: what a notice says, read from the records' details;
//! - `format`: Slack and JSON bodies;
//! - `deliver`: one worker per channel signs, sends, retries and records each outcome in the
//!   audit chain;
//! - `ending`: the `grant_ending` pass.
//!
//! Only `airlock serve` builds a [`Notifier`]; commands that open the store themselves
//! (`airlock admin`) send nothing.

mod deliver;
mod ending;
mod format;
mod notice;

use std::sync::Arc;
use std::time::Duration;

use airlock_core::audit::AuditEvent;
use airlock_core::catalog::{Catalog, SecretSource};
use airlock_core::ids::ResourceName;
use airlock_core::lifecycle::Grant;
use airlock_store::{CommitObserver, ObserveCommits};
use time::OffsetDateTime;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};

pub use deliver::RetryPolicy;
pub use ending::WARN_BEFORE;
pub use format::Format;
pub use notice::NoticeKind;

use crate::Broker;
use crate::bundle::PolicyBundle;
use crate::config::{ChannelSection, NotifySection, RouteSection, UrlSource, is_http_url};
use crate::metrics::{NOTIFICATION_QUEUE_DROPPED, NOTIFICATIONS};
use crate::outbound;
use crate::secrets::{self, SecretError};
use deliver::{Channel, Delivery, Worker};
use notice::{Notice, Notices};

/// Commits whose records wait to become notices, at most; more are dropped.
const INBOX: usize = 1024;
/// Notices waiting for one channel, at most; more are dropped for that channel only.
const CHANNEL_QUEUE: usize = 256;
/// Each attempt's time limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest secret that signs deliveries.
const MIN_SECRET_BYTES: usize = 16;

/// Why notifications cannot start. No message holds a URL or a secret.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("[notify] channel `{channel}`: cannot read {field}: {source}")]
    Secret { channel: String, field: &'static str, source: SecretError },
    #[error("[notify] channel `{channel}`: {origin} does not hold an http:// or https:// URL")]
    BadUrl { channel: String, origin: String },
    #[error("[notify] a route names channel `{0}`, which is not defined")]
    UnknownChannel(String),
    #[error("[notify] channel `{channel}`: the secret ({field}) must be at least {MIN_SECRET_BYTES} bytes")]
    ShortSecret { channel: String, field: &'static str },
    #[error("[notify] the route to `{channel}` names resource `{resource}`, which is not in the catalog")]
    UnknownResource { channel: String, resource: ResourceName },
    #[error("[notify] the route to `{channel}` names environment `{environment}`, which no resource is in")]
    UnknownEnvironment { channel: String, environment: String },
    #[error("cannot build the HTTP client for notifications: {0}")]
    Client(String),
}

/// Notifications, ready to run: channels with their URLs and secrets, routes checked against
/// the catalog, and the queue the store's observer fills.
pub struct Notifier {
    channels: Vec<Channel>,
    routes: Vec<Route>,
    base_url: Option<String>,
    retry: RetryPolicy,
    client: reqwest::Client,
    observer: Arc<CommitNotices>,
    inbox: mpsc::Receiver<Vec<AuditEvent>>,
}

impl Notifier {
    /// Reads each channel's URL and secret (from the environment or files) and checks routes
    /// against `catalog`. None when `[notify]` has no channels.
    pub fn from_config(section: &NotifySection, catalog: &Catalog) -> Result<Option<Self>, NotifyError> {
        if section.channels.is_empty() {
            return Ok(None);
        }
        let channels = section.channels.iter().map(resolve).collect::<Result<Vec<_>, _>>()?;
        let routes =
            section.routes.iter().map(|route| Route::new(route, &channels, catalog)).collect::<Result<_, _>>()?;
        let client = outbound::client(ATTEMPT_TIMEOUT).map_err(|e| NotifyError::Client(e.without_url().to_string()))?;
        let (queue, inbox) = mpsc::channel(INBOX);
        Ok(Some(Self {
            channels,
            routes,
            base_url: section.base_url.clone(),
            retry: RetryPolicy::default(),
            client,
            observer: Arc::new(CommitNotices { queue }),
            inbox,
        }))
    }

    /// Retries deliveries as `retry` says (the default: 1 s doubling to 60 s, 6 attempts).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// What the store must be told to call after each commit (`Store::observe_commits`), before
    /// the broker is made from it.
    pub fn observer(&self) -> CommitObserver {
        self.observer.clone()
    }

    /// Sends notices until `stop` turns true. What was committed before then is still routed;
    /// what is queued gets a last attempt for a few seconds, and every notice's outcome is
    /// recorded. Stop it after whatever else records changes, and before the last checkpoint.
    pub async fn run(self, broker: Broker, mut stop: watch::Receiver<bool>) {
        let Notifier { channels, routes, base_url, retry, client, observer, mut inbox } = self;
        drop(observer);
        let (queues, workers): (Vec<_>, Vec<_>) = channels
            .into_iter()
            .map(|channel| {
                let (queue, deliveries) = mpsc::channel(CHANNEL_QUEUE);
                let entry = ChannelQueue { name: channel.name.clone(), format: channel.format, queue };
                let worker = Worker::new(channel, client.clone(), broker.clone(), retry, stop.clone());
                (entry, tokio::spawn(worker.run(deliveries)))
            })
            .unzip();
        let router = Router(Arc::new(Routing { broker: broker.clone(), base_url, routes, queues }));
        let ending = tokio::spawn(ending::watch(broker, router.clone(), stop.clone()));
        loop {
            tokio::select! {
                records = inbox.recv() => match records {
                    Some(records) => router.committed(&records),
                    None => break,
                },
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        let _ = ending.await;
        inbox.close();
        while let Some(records) = inbox.recv().await {
            router.committed(&records);
        }
        // The last handle on the channel queues: the workers end once they are empty.
        drop(router);
        for worker in workers {
            let _ = worker.await;
        }
    }
}

/// Reads a channel's URL and secret.
fn resolve(section: &ChannelSection) -> Result<Channel, NotifyError> {
    let channel = section.name.clone();
    let read = |source: &SecretSource, field| {
        secrets::read_named(source).map_err(|source| NotifyError::Secret { channel: channel.clone(), field, source })
    };
    let url = match &section.url {
        UrlSource::Inline(url) => url.clone(),
        UrlSource::Env(var) => read(&SecretSource::Env(var.clone()), "url_env")?,
    };
    let url = reqwest::Url::parse(url.trim()).ok().filter(|url| is_http_url(url.as_str())).ok_or_else(|| {
        let origin = match &section.url {
            UrlSource::Env(var) => format!("environment variable `{var}` (url_env)"),
            UrlSource::Inline(_) => "url".to_owned(),
        };
        NotifyError::BadUrl { channel: channel.clone(), origin }
    })?;
    let field = match &section.secret {
        SecretSource::Env(_) => "secret_env",
        SecretSource::File(_) => "secret_file",
    };
    let secret = read(&section.secret, field)?.trim().as_bytes().to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(NotifyError::ShortSecret { channel, field });
    }
    Ok(Channel { name: section.name.clone(), format: section.format, url, secret })
}

/// Told of every commit by the store: keeps the records that may make notices and hands them on
/// without waiting.
#[derive(Debug)]
struct CommitNotices {
    queue: mpsc::Sender<Vec<AuditEvent>>,
}

impl ObserveCommits for CommitNotices {
    fn committed(&self, events: &[AuditEvent], _took: Duration) {
        let records: Vec<AuditEvent> = events.iter().filter(|e| NoticeKind::of(e.kind).is_some()).cloned().collect();
        if records.is_empty() {
            return;
        }
        match self.queue.try_send(records) {
            Ok(()) => {}
            Err(TrySendError::Full(records)) => {
                tracing::warn!(
                    records = records.len(),
                    "the notification queue is full; these records' notices are dropped"
                );
                metrics::counter!(NOTIFICATION_QUEUE_DROPPED).increment(records.len() as u64);
            }
            // Notifications have stopped: the broker is shutting down.
            Err(TrySendError::Closed(records)) => {
                tracing::debug!(records = records.len(), "notifications have stopped; no notices for these records");
            }
        }
    }
}

/// Which notices go to one channel; a list that is `None` matches anything.
#[derive(Debug)]
struct Route {
    /// The channel's index.
    channel: usize,
    kinds: Option<Vec<NoticeKind>>,
    resources: Option<Vec<ResourceName>>,
    environments: Option<Vec<String>>,
}

impl Route {
    /// A route from the configuration, refused if it names a resource or an environment the
    /// catalog does not have (it would never match: most likely a typo).
    fn new(section: &RouteSection, channels: &[Channel], catalog: &Catalog) -> Result<Self, NotifyError> {
        let name = &section.channel;
        let channel =
            channels.iter().position(|c| &c.name == name).ok_or_else(|| NotifyError::UnknownChannel(name.clone()))?;
        check_places(section, catalog)?;
        Ok(Self {
            channel,
            kinds: section.events.clone(),
            resources: section.resources.clone(),
            environments: section.environments.clone(),
        })
    }

    fn matches(&self, notice: &Notice) -> bool {
        let kind = self.kinds.as_ref().is_none_or(|kinds| kinds.contains(&notice.kind));
        let place = match &notice.resource {
            None => self.resources.is_none() && self.environments.is_none(),
            Some(resource) => {
                self.resources.as_ref().is_none_or(|names| names.iter().any(|name| name.as_str() == resource))
                    && self.environments.as_ref().is_none_or(|environments| {
                        notice.environment.as_ref().is_some_and(|environment| environments.contains(environment))
                    })
            }
        };
        kind && place
    }
}

/// Refuses a route that names a resource or an environment `catalog` does not have.
fn check_places(section: &RouteSection, catalog: &Catalog) -> Result<(), NotifyError> {
    let name = &section.channel;
    for resource in section.resources.iter().flatten() {
        if catalog.resource(resource).is_none() {
            return Err(NotifyError::UnknownResource { channel: name.clone(), resource: resource.clone() });
        }
    }
    for environment in section.environments.iter().flatten() {
        if !catalog.resources().any(|r| &r.environment == environment) {
            return Err(NotifyError::UnknownEnvironment { channel: name.clone(), environment: environment.clone() });
        }
    }
    Ok(())
}

/// Checks `[notify]`'s routes against a catalog about to replace the one they were checked
/// against at start, as [`Notifier::from_config`] did (without reading channels' secrets again).
pub fn check_routes(section: &NotifySection, catalog: &Catalog) -> Result<(), NotifyError> {
    if section.channels.is_empty() {
        return Ok(());
    }
    section.routes.iter().try_for_each(|route| check_places(route, catalog))
}

/// Where notices go: shared by the commit loop and the `grant_ending` pass.
#[derive(Clone)]
struct Router(Arc<Routing>);

struct Routing {
    broker: Broker,
    base_url: Option<String>,
    routes: Vec<Route>,
    queues: Vec<ChannelQueue>,
}

struct ChannelQueue {
    name: String,
    format: Format,
    queue: mpsc::Sender<Delivery>,
}

impl Router {
    /// Notices made with `policies`' catalog (the broker's, loaded once per use: it may be replaced).
    fn notices<'a>(&'a self, policies: &'a PolicyBundle) -> Notices<'a> {
        Notices { catalog: &policies.catalog, base_url: self.0.base_url.as_deref() }
    }

    fn committed(&self, records: &[AuditEvent]) {
        let policies = self.0.broker.policies();
        for notice in self.notices(&policies).of_commit(records) {
            self.send(&notice);
        }
    }

    fn grant_ending(&self, grant: &Grant, now: OffsetDateTime) {
        let policies = self.0.broker.policies();
        self.send(&self.notices(&policies).grant_ending(grant, now));
    }

    /// Hands `notice` to every channel one of whose routes matches it, once per channel.
    fn send(&self, notice: &Notice) {
        for (index, channel) in self.0.queues.iter().enumerate() {
            if !self.0.routes.iter().any(|route| route.channel == index && route.matches(notice)) {
                continue;
            }
            match channel.queue.try_send(Delivery::new(notice, channel.format)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        channel = %channel.name, notice = notice.kind.as_str(),
                        "the channel's queue is full; the notice is dropped"
                    );
                    metrics::counter!(NOTIFICATIONS, "channel" => channel.name.clone(), "outcome" => "dropped")
                        .increment(1);
                }
                Err(TrySendError::Closed(_)) => {
                    tracing::error!(channel = %channel.name, "the channel's worker has stopped; the notice is dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn notice(kind: NoticeKind, resource: Option<&str>, environment: Option<&str>) -> Notice {
        Notice {
            kind,
            at: datetime!(2026-11-23 10:00 UTC),
            actor: None,
            subject: Vec::new(),
            resource: resource.map(str::to_owned),
            environment: environment.map(str::to_owned),
            role: None,
            summary: String::new(),
            link: None,
            facts: Vec::new(),
            commands: Vec::new(),
        }
    }

    fn route(kinds: Option<&[NoticeKind]>, resources: Option<&[&str]>, environments: Option<&[&str]>) -> Route {
        Route {
            channel: 0,
            kinds: kinds.map(<[_]>::to_vec),
            resources: resources.map(|r| r.iter().map(|name| name.parse().unwrap()).collect()),
            environments: environments.map(|e| e.iter().map(|name| (*name).to_owned()).collect()),
        }
    }

    #[test]
    fn routes_match_on_kind_resource_and_environment() {
        use NoticeKind::*;
        let review = notice(ReviewNeeded, Some("demo-db"), Some("prod"));
        let incident = notice(IncidentOpened, None, None);
        let cases = [
            (route(None, None, None), [true, true]),
            (route(Some(&[ReviewNeeded]), None, None), [true, false]),
            (route(None, Some(&["demo-db"]), None), [true, false]),
            (route(None, Some(&["other-db"]), None), [false, false]),
            (route(None, None, Some(&["prod"])), [true, false]),
            (route(None, None, Some(&["staging"])), [false, false]),
            (route(Some(&[IncidentOpened]), None, None), [false, true]),
        ];
        for (route, expected) in cases {
            assert_eq!([route.matches(&review), route.matches(&incident)], expected, "{route:?}");
        }
    }
}
