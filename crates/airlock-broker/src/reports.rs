//! Reports for auditors: the summary of a window, and the story of one user or one resource; and
//! for auditors and incident managers, the post-mortem of one incident.
//!
//! The store reads the facts; `airlock_core::report` does the counting.

use airlock_core::audit::{time_of_ms, unix_ms};
use airlock_core::ids::{GrantId, ResourceName, UserName};
use airlock_core::lifecycle::Grant;
use airlock_core::report::activity::{Activity, GRANT_RECORD_KINDS};
use airlock_core::report::story::{IncidentReport, Story, StoryFacts, Subject, story};
use airlock_core::report::summary::{Facts, RefusedRequest, Summary, latest_standing, summary};
use airlock_core::report::{Window, ended_at};
use airlock_store::ReportScope;

use crate::{Broker, BrokerError, Caller};

/// The most statements a story lists per grant (the count is always whole).
pub const MAX_STATEMENTS_PER_GRANT: u32 = 10_000;

/// Whose story to tell.
#[derive(Debug, Clone)]
pub enum StoryOf {
    User(UserName),
    Resource(ResourceName),
}

impl StoryOf {
    fn scope(&self) -> ReportScope<'_> {
        match self {
            StoryOf::User(name) => ReportScope { user: Some(name.as_str()), resource: None },
            StoryOf::Resource(name) => ReportScope { user: None, resource: Some(name.as_str()) },
        }
    }

    fn subject(&self) -> Subject {
        match self {
            StoryOf::User(name) => Subject { kind: "user".into(), name: name.to_string() },
            StoryOf::Resource(name) => Subject { kind: "resource".into(), name: name.to_string() },
        }
    }
}

fn check(window: &Window) -> Result<(), BrokerError> {
    if window.since < window.until {
        Ok(())
    } else {
        Err(BrokerError::BadWindow("`since` must come before `until`".into()))
    }
}

impl Broker {
    /// The summary of `window`; auditors only.
    pub async fn report_summary(&self, caller: &Caller, window: Window) -> Result<Summary, BrokerError> {
        self.auditors_only(caller)?;
        check(&window)?;
        let (since, until) = (unix_ms(window.since), unix_ms(window.until));
        let scope = ReportScope::default();
        let requests = self.store().requests_made(since, until, scope).await?;
        let grants = self.grants_in(&window, scope).await?;
        let activity = self.activity(&grants, 0).await?;
        let refused = self.store().refused_requests(since, until).await?;
        let policies = self.policies();
        let catalog = &policies.catalog;
        let facts = Facts {
            requests,
            refused: refused.iter().filter_map(RefusedRequest::from_record).collect(),
            grants,
            activity: activity.grants,
            refusals: activity.refusals,
            gateway_resources: catalog.resources().filter(|r| r.postgres.is_some()).map(|r| r.name.clone()).collect(),
            standing: latest_standing(&self.store().standing_records(until).await?),
            open_reviews: self.store().open_reviews_opened_before(window.until).await?,
        };
        Ok(summary(window, facts, self.clock().now()))
    }

    /// Everything `of` asked for, was given and did in `window`, listing at most
    /// `statements_per_grant` statements of each grant; auditors only. A resource no longer in
    /// the catalog still has its history.
    pub async fn report_story(
        &self,
        caller: &Caller,
        of: StoryOf,
        window: Window,
        statements_per_grant: u32,
    ) -> Result<Story, BrokerError> {
        self.auditors_only(caller)?;
        check(&window)?;
        let (since, until) = (unix_ms(window.since), unix_ms(window.until));
        let scope = of.scope();
        let mut requests = self.store().requests_made(since, until, scope).await?;
        let grants = self.grants_in(&window, scope).await?;
        let missing: Vec<String> = grants
            .iter()
            .filter(|g| !requests.iter().any(|r| r.id == g.request_id))
            .map(|g| g.request_id.to_string())
            .collect();
        requests.extend(self.store().requests_by_id(&missing).await?);
        let activity = self.activity(&grants, statements_per_grant.min(MAX_STATEMENTS_PER_GRANT)).await?;
        let refused = self.store().refused_requests(since, until).await?;
        let refused = refused
            .iter()
            .filter_map(RefusedRequest::from_record)
            .filter(|r| match &of {
                StoryOf::User(name) => r.requester == name.as_str(),
                StoryOf::Resource(name) => r.resource == name.as_str(),
            })
            .collect();
        let reviewed = match &of {
            StoryOf::User(_) => {
                // A request can be reviewed until it expires unreviewed.
                let reviewable_since = unix_ms(window.since - self.settings.pending_ttl.as_time());
                self.store().requests_made(reviewable_since, until, ReportScope::default()).await?
            }
            StoryOf::Resource(_) => Vec::new(),
        };
        let facts = StoryFacts { requests, grants, activity: activity.grants, refused, reviewed };
        Ok(story(of.subject(), window, facts, self.clock().now()))
    }

    /// Everything given and done under incident `id`, listing at most `statements_per_grant`
    /// statements of each grant; auditors and incident managers.
    pub async fn report_incident(
        &self,
        caller: &Caller,
        id: &str,
        statements_per_grant: u32,
    ) -> Result<IncidentReport, BrokerError> {
        self.may_read_incident_reports(caller)?;
        let incident = self.incident(id).await?;
        let now = self.clock().now();
        let until = incident.closed_at.unwrap_or(now).max(incident.opened_at) + time::Duration::MILLISECOND;
        let window = Window { since: incident.opened_at, until };
        let requests = self.store().requests_of_incident(id).await?;
        let grants = self.store().grants_of_incident(id).await?;
        let activity = self.activity(&grants, statements_per_grant.min(MAX_STATEMENTS_PER_GRANT)).await?;
        let mut breakglass_reviews = Vec::new();
        for request in requests.iter().filter(|r| r.break_glass) {
            if let Some(grant) = grants.iter().find(|g| g.request_id == request.id)
                && let Some(review) = self.store().review(&grant.id.to_string()).await?
            {
                breakglass_reviews.push(review);
            }
        }
        let refused = self.store().refused_requests(unix_ms(window.since), unix_ms(window.until)).await?;
        let refused = refused
            .iter()
            .filter_map(RefusedRequest::from_record)
            .filter(|r| r.incident.as_deref() == Some(id))
            .collect();
        let facts = StoryFacts { requests, grants, activity: activity.grants, refused, reviewed: Vec::new() };
        let subject = Subject { kind: "incident".into(), name: id.to_owned() };
        Ok(IncidentReport { incident, story: story(subject, window, facts, now), breakglass_reviews })
    }

    /// Grants in `scope` that gave access during `window`.
    async fn grants_in(&self, window: &Window, scope: ReportScope<'_>) -> Result<Vec<Grant>, BrokerError> {
        let mut grants = self.store().grants_overlapping(unix_ms(window.since), unix_ms(window.until), scope).await?;
        let now = self.clock().now();
        grants.retain(|g| window.overlaps(g.starts_at, ended_at(g, now).unwrap_or(g.ends_at)));
        Ok(grants)
    }

    /// What the audit recorded under `grants`, with up to `statements_per_grant` statements listed.
    async fn activity(&self, grants: &[Grant], statements_per_grant: u32) -> Result<Activity, BrokerError> {
        let ids: Vec<String> = grants.iter().map(|g| g.id.to_string()).collect();
        let kinds: Vec<&str> = GRANT_RECORD_KINDS.iter().map(|kind| kind.as_str()).collect();
        let mut activity = Activity::default();
        for record in self.store().grant_records(&ids, &kinds).await? {
            activity.add(&record);
        }
        for count in self.store().statement_counts(&ids).await? {
            let Ok(grant) = count.grant.parse::<GrantId>() else { continue };
            let last = time_of_ms(count.last_at_ms);
            activity.add_statements(grant, &count.session, count.count.max(0) as u64, last);
        }
        if statements_per_grant > 0 {
            for id in &ids {
                for record in self.store().grant_statements(id, statements_per_grant).await? {
                    activity.add(&record);
                }
            }
        }
        Ok(activity)
    }
}
