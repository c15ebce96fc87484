//! The bodies a channel receives: a Slack-compatible message (`{"text": …}`, which any service
//! that takes Slack incoming webhooks understands) or Airlock's JSON document. Both are made
//! from the same [`Notice`]; docs/notifications.md shows them.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use uuid::Uuid;

use super::notice::{FactValue, Notice};

/// How a channel wants its notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"text": "…"}` in Slack's mrkdwn.
    Slack,
    /// Airlock's JSON document: every field on its own, for programs.
    Json,
}

/// The body POSTed for `notice` as delivery `delivery`.
pub fn body(format: Format, notice: &Notice, delivery: Uuid) -> String {
    match format {
        Format::Slack => json!({ "text": slack_text(notice) }).to_string(),
        Format::Json => json_document(notice, delivery).to_string(),
    }
}

/// A time as people read it in messages: `2026-11-23 10:30 UTC`.
pub fn clock_time(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    utc.format(format_description!("[year]-[month]-[day] [hour]:[minute] UTC")).unwrap_or_else(|_| rfc3339(at))
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.unix_timestamp().to_string())
}

fn json_document(notice: &Notice, delivery: Uuid) -> Value {
    let subject: Map<String, Value> =
        notice.subject.iter().map(|(what, id)| ((*what).to_owned(), Value::from(id.as_str()))).collect();
    let mut document = Map::new();
    let mut put = |key: &str, value: Value| document.insert(key.to_owned(), value);
    put("delivery", delivery.to_string().into());
    put("kind", notice.kind.as_str().into());
    put("at", rfc3339(notice.at).into());
    put("subject", subject.into());
    put("resource", notice.resource.clone().into());
    put("environment", notice.environment.clone().into());
    put("role", notice.role.clone().into());
    put("actor", notice.actor.clone().into());
    put("summary", notice.summary.clone().into());
    put("link", notice.link.clone().into());
    for fact in &notice.facts {
        put(fact.key, json_value(&fact.value));
    }
    if !notice.commands.is_empty() {
        let commands: Map<String, Value> =
            notice.commands.iter().map(|(what, command)| ((*what).to_owned(), Value::from(command.as_str()))).collect();
        put("commands", commands.into());
    }
    document.into()
}

fn json_value(value: &FactValue) -> Value {
    match value {
        FactValue::Text(text) => text.as_str().into(),
        FactValue::Time(at) => rfc3339(*at).into(),
        FactValue::Count(count) => (*count).into(),
        FactValue::Flag(flag) => (*flag).into(),
        FactValue::List(items) => items.clone().into(),
    }
}

/// The summary in bold, then one line per id, fact and command, then the link. Everything that
/// came from a record is escaped, so a reason cannot mention `@channel` or forge a link.
fn slack_text(notice: &Notice) -> String {
    let mut lines = vec![format!("*{}*", escape(&notice.summary))];
    for (what, id) in &notice.subject {
        lines.push(format!("{}: `{}`", capitalized(what), escape(id)));
    }
    for fact in &notice.facts {
        lines.push(format!("{}: {}", fact.label, escape(&slack_value(&fact.value))));
    }
    for (what, command) in &notice.commands {
        lines.push(format!("{}: `{}`", capitalized(what), escape(command)));
    }
    if let Some(link) = &notice.link {
        lines.push(format!("<{}|Open in Airlock>", escape(link)));
    }
    lines.join("\n")
}

fn slack_value(value: &FactValue) -> String {
    match value {
        FactValue::Text(text) => text.clone(),
        FactValue::Time(at) => clock_time(*at),
        FactValue::Count(count) => count.to_string(),
        FactValue::Flag(flag) => if *flag { "yes" } else { "no" }.to_owned(),
        FactValue::List(items) => items.join(", "),
    }
}

/// Slack's control characters in mrkdwn: `&`, `<` and `>` (which open links and mentions).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::notice::{Fact, NoticeKind};
    use time::macros::datetime;

    fn notice() -> Notice {
        Notice {
            kind: NoticeKind::ReviewNeeded,
            at: datetime!(2026-11-23 10:00 UTC),
            actor: Some("alice".into()),
            subject: vec![("request", "r-1".into())],
            resource: Some("demo-db".into()),
            environment: Some("prod".into()),
            role: Some("write".into()),
            summary: "Review needed: alice asks for write on demo-db (prod) for 30m".into(),
            link: Some("https://airlock.example.com/v1/requests/r-1".into()),
            facts: vec![Fact {
                key: "reason",
                label: "Reason",
                value: FactValue::Text("<!channel> fix & <https://evil.example|click>".into()),
            }],
            commands: vec![("approve", "airlock approve r-1".into())],
        }
    }

    #[test]
    fn slack_text_escapes_what_records_say() {
        let body: Value = serde_json::from_str(&body(Format::Slack, &notice(), Uuid::nil())).unwrap();
        assert_eq!(
            body["text"],
            "*Review needed: alice asks for write on demo-db (prod) for 30m*\nRequest: `r-1`\n\
             Reason: &lt;!channel&gt; fix &amp; &lt;https://evil.example|click&gt;\n\
             Approve: `airlock approve r-1`\n<https://airlock.example.com/v1/requests/r-1|Open in Airlock>"
        );
    }

    #[test]
    fn json_documents_carry_every_field_and_times_in_rfc3339() {
        let body: Value = serde_json::from_str(&body(Format::Json, &notice(), Uuid::nil())).unwrap();
        assert_eq!(body["delivery"], "00000000-0000-0000-0000-000000000000");
        assert_eq!((body["kind"].as_str(), body["at"].as_str()), (Some("review_needed"), Some("2026-11-23T10:00:00Z")));
        assert_eq!(body["subject"], json!({"request": "r-1"}));
        assert_eq!(body["commands"], json!({"approve": "airlock approve r-1"}));
        assert_eq!(body["reason"], "<!channel> fix & <https://evil.example|click>");
        assert_eq!(clock_time(datetime!(2026-11-23 11:30 +01:00)), "2026-11-23 10:30 UTC");
    }
}
