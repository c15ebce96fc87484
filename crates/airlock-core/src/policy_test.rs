//! Policy test cases: a principal, an action, a resource and role, some context, and the expected
//! decision. `airlock policy test` runs them like a test suite, so policy changes are reviewed
//! with their consequences.
//!
//! ```toml
//! [[case]]
//! name = "on-call engineers skip review for read"
//! principal = "dana"
//! groups = ["eng", "oncall"]
//! action = "auto_approve"
//! resource = "demo-db"
//! role = "read"
//! duration = "30m"
//! expect = "allow"
//! policies = ["oncall-auto-approve-read"]   # optional: the deciding policies
//! incident = { id = "INC-7", severity = 1 } # optional: the open incident the request names
//! mfa = true                  # optional: a fresh second factor (default false)
//! trusted_device = true       # optional: asked from a trusted device (default false)
//! ```

use std::net::IpAddr;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::catalog::Catalog;
use crate::ids::{GroupName, ResourceName, RoleName, UserName};
use crate::incident::IncidentRef;
use crate::policy::{Action, Facts, PolicyEngine, Principal};
use crate::values::GrantDuration;

/// Why a test file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {source}")]
pub struct CaseFileError {
    pub file: String,
    pub source: toml::de::Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Allow,
    Deny,
}

/// One test case, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    principal: UserName,
    #[serde(default)]
    groups: Vec<GroupName>,
    #[serde(default)]
    service: bool,
    action: String,
    resource: ResourceName,
    role: RoleName,
    duration: GrantDuration,
    #[serde(default = "default_reason")]
    reason: String,
    /// For `approve`: whose request is reviewed (defaults to the principal).
    requester: Option<UserName>,
    /// When the decision is made (defaults to a Monday, 10:00 UTC).
    #[serde(default = "default_time", with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    #[serde(default = "default_ip")]
    source_ip: IpAddr,
    expect: Expect,
    policies: Option<Vec<String>>,
    incident: Option<IncidentRef>,
    /// Whether the principal proved a second factor recently (`context.mfa`; default false).
    #[serde(default)]
    mfa: bool,
    /// Whether the principal asks from a trusted device (`context.device.trusted`; default false).
    #[serde(default)]
    trusted_device: bool,
}

fn default_reason() -> String {
    "policy test".into()
}

fn default_time() -> OffsetDateTime {
    time::macros::datetime!(2026-11-23 10:00 UTC)
}

fn default_ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    case: Vec<Case>,
}

/// Parses one file of cases.
pub fn parse_cases(file: &str, text: &str) -> Result<Vec<Case>, CaseFileError> {
    toml::from_str::<CaseFile>(text).map(|f| f.case).map_err(|source| CaseFileError { file: file.to_owned(), source })
}

/// Runs one case; `Err` says how the decision differed from the expectation.
pub fn run_case(case: &Case, engine: &PolicyEngine, catalog: &Catalog) -> Result<(), String> {
    let action: Action = case.action.parse()?;
    let resource = catalog
        .resource(&case.resource)
        .ok_or_else(|| format!("resource `{}` is not in the catalog", case.resource))?;
    if !resource.roles.contains_key(&case.role) {
        return Err(format!("resource `{}` has no role `{}`", case.resource, case.role));
    }
    let principal = Principal { name: case.principal.clone(), groups: case.groups.clone(), service: case.service };
    let facts = Facts {
        role: &case.role,
        duration: case.duration,
        reason: &case.reason,
        requester: case.requester.as_ref().unwrap_or(&case.principal),
        now: case.at,
        source_ip: case.source_ip,
        incident: case.incident.as_ref(),
        mfa: case.mfa,
        trusted_device: case.trusted_device,
    };
    let decision = engine.decide(action, &principal, resource, &facts);
    let got = if decision.allowed { Expect::Allow } else { Expect::Deny };
    if got != case.expect {
        let by = if decision.policies.is_empty() {
            "no policy permitted".to_owned()
        } else {
            format!("decided by {}", decision.policies.join(", "))
        };
        let errors = if decision.errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {}", decision.errors.join("; "))
        };
        return Err(format!("expected {:?}, got {:?} ({by}{errors})", case.expect, got).to_lowercase());
    }
    match &case.policies {
        Some(expected) if expected != &decision.policies => {
            Err(format!("expected deciding policies {expected:?}, got {:?}", decision.policies))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySource;

    #[test]
    fn cases_pass_and_fail_with_reasons() {
        let catalog = Catalog::parse(
            "[[resource]]\nname = \"db\"\nkind = \"postgres\"\nenvironment = \"prod\"\n[resource.roles.read]\n",
        )
        .unwrap();
        let engine = PolicyEngine::new(
            &[PolicySource {
                file: "p.cedar".into(),
                text: r#"@id("eng") permit(principal in Group::"eng", action == Action::"request", resource);
                    @id("sev1") permit(principal, action == Action::"auto_approve", resource)
                      when { context has incident && context.incident.severity <= 1 };
                    @id("mfa") permit(principal in Group::"sre", action == Action::"auto_approve", resource)
                      when { context.mfa };
                    @id("device") permit(principal in Group::"oncall", action == Action::"auto_approve", resource)
                      when { context.device.trusted };"#
                    .into(),
            }],
            &catalog,
        )
        .unwrap();
        let cases = parse_cases(
            "t.toml",
            r#"
            [[case]]
            name = "eng may"
            principal = "a"
            groups = ["eng"]
            action = "request"
            resource = "db"
            role = "read"
            duration = "5m"
            expect = "allow"
            policies = ["eng"]
            [[case]]
            name = "others may not (wrongly expected)"
            principal = "b"
            action = "request"
            resource = "db"
            role = "read"
            duration = "5m"
            expect = "allow"
            [[case]]
            name = "unknown role"
            principal = "b"
            action = "request"
            resource = "db"
            role = "write"
            duration = "5m"
            expect = "deny"
            [[case]]
            name = "a severe incident skips review"
            principal = "b"
            action = "auto_approve"
            resource = "db"
            role = "read"
            duration = "5m"
            incident = { id = "INC-7", severity = 1 }
            expect = "allow"
            policies = ["sev1"]
            [[case]]
            name = "without an incident it does not"
            principal = "b"
            action = "auto_approve"
            resource = "db"
            role = "read"
            duration = "5m"
            expect = "deny"
            [[case]]
            name = "a fresh second factor skips review"
            principal = "c"
            groups = ["sre"]
            action = "auto_approve"
            resource = "db"
            role = "read"
            duration = "5m"
            mfa = true
            expect = "allow"
            policies = ["mfa"]
            [[case]]
            name = "without one it does not"
            principal = "c"
            groups = ["sre"]
            action = "auto_approve"
            resource = "db"
            role = "read"
            duration = "5m"
            expect = "deny"
            [[case]]
            name = "a trusted device skips review"
            principal = "d"
            groups = ["oncall"]
            action = "auto_approve"
            resource = "db"
            role = "read"
            duration = "5m"
            trusted_device = true
            expect = "allow"
            policies = ["device"]
            [[case]]
            name = "another machine does not"
            principal = "d"
            groups = ["oncall"]
            action = "auto_approve"
            resource = "db"
            role = "read"
            duration = "5m"
            expect = "deny"
            "#,
        )
        .unwrap();
        let results: Vec<_> = cases.iter().map(|c| run_case(c, &engine, &catalog)).collect();
        assert_eq!(
            results,
            vec![
                Ok(()),
                Err("expected allow, got deny (no policy permitted)".into()),
                Err("resource `db` has no role `write`".into()),
                Ok(()),
                Ok(()),
                Ok(()),
                Ok(()),
                Ok(()),
                Ok(()),
            ]
        );
        let error = parse_cases("t.toml", "[[case]]\nname = 1\n").unwrap_err();
        assert!(error.to_string().starts_with("t.toml: "), "{error}");
    }
}
