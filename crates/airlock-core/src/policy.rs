//! Policy decisions with Cedar.
//!
//! Cedar evaluates every policy it is handed, about 0.7 µs each, so a large policy set is sliced
//! once, at load: each policy goes to the (resource, action) buckets its scope can match, and a
//! decision asks Cedar only about its own bucket. Policies whose scope does not name one resource
//! (`resource`, `resource in …`, `resource is …`) are in every bucket of their actions, so the
//! slicing never changes an answer.
//!
//! Building Cedar's inputs costs as much as evaluating a bucket, so the pieces that repeat are
//! kept in bounded caches keyed by their whole content (never by a name alone, so a changed
//! group membership can never meet a stale entry): the entities of a (principal, resource) pair,
//! and the `ip(…)` expression of a source address (Cedar parses the function's name each time
//! it builds one).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, Request, ResourceConstraint, RestrictedExpression, Schema, ValidationMode, Validator,
};
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::catalog::{Catalog, Resource};
use crate::ids::{GroupName, RoleName, UserName};
use crate::incident::IncidentRef;
use crate::values::GrantDuration;

/// The schema every policy is validated against.
pub const SCHEMA: &str = include_str!("airlock.cedarschema");

/// Why a policy set was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: policy templates are not supported")]
    Template { file: String },
    #[error("policy id `{0}` is used twice")]
    DuplicateId(String),
    #[error("policies do not match the Airlock schema:\n{0}")]
    Invalid(String),
}

/// What a policy is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Request,
    Approve,
    AutoApprove,
    BreakGlass,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Request, Action::Approve, Action::AutoApprove, Action::BreakGlass];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Request => "request",
            Action::Approve => "approve",
            Action::AutoApprove => "auto_approve",
            Action::BreakGlass => "break_glass",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == text)
            .ok_or_else(|| format!("unknown action `{text}`: expected request, approve, auto_approve or break_glass"))
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub name: UserName,
    pub groups: Vec<GroupName>,
    pub service: bool,
}

/// What the decision is about, besides who and which resource.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub role: &'a RoleName,
    pub duration: GrantDuration,
    pub reason: &'a str,
    pub requester: &'a UserName,
    pub now: OffsetDateTime,
    pub source_ip: IpAddr,
    /// The open incident the request is made for.
    pub incident: Option<&'a IncidentRef>,
    /// Whether the caller proved a second factor recently.
    pub mfa: bool,
    /// Whether the caller asked from an enrolled device an administrator approved.
    pub trusted_device: bool,
}

/// A policy decision and the policies that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the policies that decided: the permits that allowed, or the forbids that denied.
    /// Empty when nothing permitted (default deny).
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (they are skipped, so the decision fails closed).
    pub errors: Vec<String>,
}

/// One policy file's name and text.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub file: String,
    pub text: String,
}

/// The loaded, validated, indexed policies.
pub struct PolicyEngine {
    by_resource: HashMap<String, [PolicySet; 4]>,
    any_resource: [PolicySet; 4],
    resources: HashMap<String, Entity>,
    /// Parsed once: parsing a type name runs Cedar's parser, which costs more than a decision.
    user_type: EntityTypeName,
    group_type: EntityTypeName,
    resource_type: EntityTypeName,
    actions: [EntityUid; 4],
    authorizer: Authorizer,
    policy_count: usize,
    entities: Cache<(Principal, String), Arc<Entities>>,
    source_ips: Cache<IpAddr, RestrictedExpression>,
}

/// How many (principal, resource) entity sets and source addresses the engine keeps prepared.
const PREPARED_ENTRIES: usize = 16_384;

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine").field("policies", &self.policy_count).finish()
    }
}

/// A stable version of a policy set and catalog: the SHA-256 of their sources, in a fixed order.
pub fn version_of<'a>(sources: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut ordered: Vec<_> = sources.into_iter().collect();
    ordered.sort();
    let mut hasher = Sha256::new();
    for (name, text) in ordered {
        for part in [name, text] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

fn schema() -> Schema {
    Schema::from_cedarschema_str(SCHEMA).expect("the built-in schema parses").0
}

fn type_name(kind: &str) -> EntityTypeName {
    EntityTypeName::from_str(kind).expect("a built-in entity type parses")
}

fn uid(kind: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name(kind), EntityId::new(id))
}

/// Parses every source, names each policy by its `@id` annotation (or `file#n`), and refuses
/// duplicates and templates.
fn parse_sources(sources: &[PolicySource]) -> Result<Vec<Policy>, PolicyError> {
    let mut policies = Vec::new();
    let mut seen = HashSet::new();
    for source in sources {
        let set = PolicySet::from_str(&source.text).map_err(|e| PolicyError::Syntax {
            file: source.file.clone(),
            message: format!("{:?}", miette_free(&e)),
        })?;
        if set.templates().next().is_some() {
            return Err(PolicyError::Template { file: source.file.clone() });
        }
        let mut in_file: Vec<&Policy> = set.policies().collect();
        // Cedar numbers unnamed policies `policy0`, `policy1`, … in source order.
        in_file.sort_by_key(|p| p.id().to_string().trim_start_matches("policy").parse::<usize>().unwrap_or(0));
        for (n, policy) in in_file.into_iter().enumerate() {
            let id = match policy.annotation("id") {
                Some(id) => id.to_owned(),
                None => format!("{}#{}", source.file, n + 1),
            };
            if !seen.insert(id.clone()) {
                return Err(PolicyError::DuplicateId(id));
            }
            policies.push(policy.new_id(PolicyId::new(id)));
        }
    }
    Ok(policies)
}

/// Cedar's errors render their details through `Display` of each diagnostic; join them.
fn miette_free(error: &cedar_policy::ParseErrors) -> String {
    error.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

fn actions_of(policy: &Policy) -> Vec<Action> {
    let named = |uid: &EntityUid| Action::from_str(uid.id().unescaped()).ok();
    match policy.action_constraint() {
        ActionConstraint::Any => Action::ALL.to_vec(),
        ActionConstraint::Eq(uid) => named(&uid).into_iter().collect(),
        ActionConstraint::In(uids) => uids.iter().filter_map(named).collect(),
    }
}

fn resource_of(policy: &Policy) -> Option<String> {
    match policy.resource_constraint() {
        ResourceConstraint::Eq(uid) => Some(uid.id().unescaped().to_owned()),
        _ => None,
    }
}

fn resource_entity(resource: &Resource) -> Entity {
    let attrs = HashMap::from([
        ("kind".to_owned(), RestrictedExpression::new_string(resource.kind.clone())),
        ("environment".to_owned(), RestrictedExpression::new_string(resource.environment.clone())),
        (
            "tags".to_owned(),
            RestrictedExpression::new_set(resource.tags.iter().cloned().map(RestrictedExpression::new_string)),
        ),
        ("sensitive".to_owned(), RestrictedExpression::new_bool(resource.sensitive)),
    ]);
    Entity::new(uid("Resource", resource.name.as_str()), attrs, HashSet::new())
        .expect("resource attributes are literals")
}

impl PolicyEngine {
    /// Parses, validates against [`SCHEMA`] and indexes the policies for the catalog's resources.
    pub fn new(sources: &[PolicySource], catalog: &Catalog) -> Result<Self, PolicyError> {
        let policies = parse_sources(sources)?;
        let mut whole = PolicySet::new();
        for policy in &policies {
            whole.add(policy.clone()).map_err(|_| PolicyError::DuplicateId(policy.id().to_string()))?;
        }
        let validation = Validator::new(schema()).validate(&whole, ValidationMode::Strict);
        if !validation.validation_passed() {
            let messages: Vec<String> =
                validation.validation_errors().map(|e| format!("  {}: {e}", e.policy_id())).collect();
            return Err(PolicyError::Invalid(messages.join("\n")));
        }

        let mut any_resource: [PolicySet; 4] = Default::default();
        let mut named: HashMap<String, Vec<&Policy>> = HashMap::new();
        for policy in &policies {
            match resource_of(policy) {
                Some(resource) => named.entry(resource).or_default().push(policy),
                None => {
                    for action in actions_of(policy) {
                        add(&mut any_resource[action.index()], policy);
                    }
                }
            }
        }
        let mut by_resource = HashMap::new();
        for (resource, own) in named {
            let mut sets = any_resource.clone();
            for policy in own {
                for action in actions_of(policy) {
                    add(&mut sets[action.index()], policy);
                }
            }
            by_resource.insert(resource, sets);
        }
        let resources = catalog.resources().map(|r| (r.name.as_str().to_owned(), resource_entity(r))).collect();
        Ok(Self {
            by_resource,
            any_resource,
            resources,
            user_type: type_name("User"),
            group_type: type_name("Group"),
            resource_type: type_name("Resource"),
            actions: Action::ALL.map(|a| uid("Action", a.as_str())),
            authorizer: Authorizer::new(),
            policy_count: policies.len(),
            entities: Cache::new(PREPARED_ENTRIES),
            source_ips: Cache::new(PREPARED_ENTRIES),
        })
    }

    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// Asks the policies whether `principal` may do `action` on `resource` given `facts`.
    /// Anything that cannot be evaluated is a denial.
    pub fn decide(&self, action: Action, principal: &Principal, resource: &Resource, facts: &Facts<'_>) -> Decision {
        let name = resource.name.as_str();
        let policies = &self.by_resource.get(name).unwrap_or(&self.any_resource)[action.index()];
        match self.evaluate(action, principal, resource, facts, policies) {
            Ok(decision) => decision,
            Err(error) => Decision { allowed: false, policies: Vec::new(), errors: vec![error] },
        }
    }

    fn evaluate(
        &self,
        action: Action,
        principal: &Principal,
        resource: &Resource,
        facts: &Facts<'_>,
        policies: &PolicySet,
    ) -> Result<Decision, String> {
        let entities = self.entities_for(principal, resource)?;
        let request = Request::new(
            EntityUid::from_type_name_and_id(self.user_type.clone(), EntityId::new(principal.name.as_str())),
            self.actions[action.index()].clone(),
            EntityUid::from_type_name_and_id(self.resource_type.clone(), EntityId::new(resource.name.as_str())),
            self.context(facts).map_err(|e| e.to_string())?,
            None,
        )
        .map_err(|e| e.to_string())?;
        let response = self.authorizer.is_authorized(&request, policies, &entities);
        let deciding: BTreeSet<String> = response.diagnostics().reason().map(|id| id.to_string()).collect();
        Ok(Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            policies: deciding.into_iter().collect(),
            errors: response.diagnostics().errors().map(|e| e.to_string()).collect(),
        })
    }

    /// The principal, its groups and the resource as Cedar entities. A resource the catalog
    /// does not know is built afresh and never cached, since only its name would key it.
    fn entities_for(&self, principal: &Principal, resource: &Resource) -> Result<Arc<Entities>, String> {
        let Some(resource_entity) = self.resources.get(resource.name.as_str()) else {
            return self.build_entities(principal, resource_entity(resource));
        };
        let key = (principal.clone(), resource.name.as_str().to_owned());
        self.entities.get_or_insert_with(&key, || self.build_entities(principal, resource_entity.clone()))
    }

    fn build_entities(&self, principal: &Principal, resource: Entity) -> Result<Arc<Entities>, String> {
        let groups: HashSet<EntityUid> = principal
            .groups
            .iter()
            .map(|g| EntityUid::from_type_name_and_id(self.group_type.clone(), EntityId::new(g.as_str())))
            .collect();
        let user = Entity::new(
            EntityUid::from_type_name_and_id(self.user_type.clone(), EntityId::new(principal.name.as_str())),
            HashMap::from([("service".to_owned(), RestrictedExpression::new_bool(principal.service))]),
            groups.clone(),
        )
        .map_err(|e| e.to_string())?;
        let group_entities = groups.into_iter().map(|g| Entity::new_no_attrs(g, HashSet::new()));
        let entities =
            Entities::from_entities(group_entities.chain([user, resource]), None).map_err(|e| e.to_string())?;
        Ok(Arc::new(entities))
    }

    fn context(&self, facts: &Facts<'_>) -> Result<Context, cedar_policy::ContextCreationError> {
        let weekday = facts.now.weekday().to_string().to_lowercase();
        let source_ip = self.source_ips.get_or_insert_with(&facts.source_ip, || {
            Ok::<_, std::convert::Infallible>(RestrictedExpression::new_ip(facts.source_ip.to_string()))
        });
        let Ok(source_ip) = source_ip;
        let incident = facts.incident.map(|incident| {
            let record = RestrictedExpression::new_record([
                ("id".to_owned(), RestrictedExpression::new_string(incident.id.to_string())),
                ("severity".to_owned(), RestrictedExpression::new_long(i64::from(incident.severity.level()))),
            ]);
            ("incident".to_owned(), record.expect("two distinct keys"))
        });
        let device = RestrictedExpression::new_record([(
            "trusted".to_owned(),
            RestrictedExpression::new_bool(facts.trusted_device),
        )])
        .expect("one key");
        Context::from_pairs(
            [
                ("role".to_owned(), RestrictedExpression::new_string(facts.role.to_string())),
                ("duration_seconds".to_owned(), RestrictedExpression::new_long(facts.duration.as_secs() as i64)),
                ("reason".to_owned(), RestrictedExpression::new_string(facts.reason.to_owned())),
                ("requester".to_owned(), RestrictedExpression::new_string(facts.requester.to_string())),
                ("hour".to_owned(), RestrictedExpression::new_long(i64::from(facts.now.hour()))),
                ("weekday".to_owned(), RestrictedExpression::new_string(weekday)),
                ("source_ip".to_owned(), source_ip),
                ("mfa".to_owned(), RestrictedExpression::new_bool(facts.mfa)),
                ("device".to_owned(), device),
            ]
            .into_iter()
            .chain(incident),
        )
    }
}

fn add(set: &mut PolicySet, policy: &Policy) {
    set.add(policy.clone()).expect("policy ids were checked to be unique");
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"
        [[resource]]
        name = "db"
        kind = "postgres"
        environment = "prod"
        [resource.roles.read]
        [[resource]]
        name = "other"
        kind = "postgres"
        environment = "staging"
        [resource.roles.read]
    "#;

    fn engine(text: &str) -> Result<PolicyEngine, PolicyError> {
        PolicyEngine::new(
            &[PolicySource { file: "test.cedar".into(), text: text.into() }],
            &Catalog::parse(CATALOG).unwrap(),
        )
    }

    fn ask(engine: &PolicyEngine, action: Action, user: &str, groups: &[&str], resource: &str) -> Decision {
        let catalog = Catalog::parse(CATALOG).unwrap();
        let principal = Principal {
            name: user.parse().unwrap(),
            groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
            service: false,
        };
        let role: RoleName = "read".parse().unwrap();
        let facts = Facts {
            role: &role,
            duration: GrantDuration::from_secs(600).unwrap(),
            reason: "INC-1",
            requester: &principal.name,
            now: time::macros::datetime!(2026-11-23 10:00 UTC),
            source_ip: "127.0.0.1".parse().unwrap(),
            incident: None,
            mfa: false,
            trusted_device: false,
        };
        engine.decide(action, &principal, catalog.resource(&resource.parse().unwrap()).unwrap(), &facts)
    }

    #[test]
    fn decisions_name_their_policies() {
        let engine = engine(
            r#"
            @id("eng-request")
            permit(principal in Group::"eng", action == Action::"request", resource == Resource::"db")
              when { context.role == "read" && context.duration_seconds <= 3600 };
            permit(principal in Group::"sre", action in [Action::"approve", Action::"request"], resource)
              when { resource.environment == "prod" };
            @id("no-weekend")
            forbid(principal, action, resource) when { context.weekday == "sunday" };
            "#,
        )
        .unwrap();
        let d = ask(&engine, Action::Request, "alice", &["eng"], "db");
        assert_eq!((d.allowed, d.policies), (true, vec!["eng-request".to_owned()]));
        let d = ask(&engine, Action::Request, "alice", &["eng"], "other");
        assert_eq!((d.allowed, d.policies.len()), (false, 0));
        let d = ask(&engine, Action::Approve, "bob", &["sre"], "db");
        assert_eq!((d.allowed, d.policies), (true, vec!["test.cedar#2".to_owned()]));
        let d = ask(&engine, Action::Approve, "bob", &["sre"], "other");
        assert!(!d.allowed);
        let d = ask(&engine, Action::AutoApprove, "alice", &["eng", "sre"], "db");
        assert!(!d.allowed);
    }

    #[test]
    fn prepared_entities_follow_group_membership() {
        let engine = engine(r#"permit(principal in Group::"eng", action == Action::"request", resource);"#).unwrap();
        assert!(ask(&engine, Action::Request, "alice", &["eng"], "db").allowed);
        // Same name, same resource, groups changed since: the prepared entities must not answer.
        assert!(!ask(&engine, Action::Request, "alice", &[], "db").allowed);
        assert!(!ask(&engine, Action::Request, "alice", &["ops"], "db").allowed);
        assert!(ask(&engine, Action::Request, "alice", &["eng"], "db").allowed);
    }

    #[test]
    fn refuses_policies_outside_the_schema() {
        let error = engine(r#"permit(principal, action, resource) when { context.rolee == "read" };"#).unwrap_err();
        assert!(error.to_string().contains("policies do not match the Airlock schema"), "{error}");
        let error = engine(r#"permit(principal, action == Action::"delete", resource);"#).unwrap_err();
        assert!(error.to_string().contains("policies do not match"), "{error}");
        let error = engine("permit(principal, action, resource").unwrap_err();
        assert!(error.to_string().starts_with("test.cedar:"), "{error}");
        let error =
            engine("@id(\"a\") permit(principal, action, resource); @id(\"a\") forbid(principal, action, resource);")
                .unwrap_err();
        assert_eq!(error.to_string(), "policy id `a` is used twice");
    }

    #[test]
    fn versions_are_stable_and_sensitive() {
        let a = version_of([("a.cedar", "x"), ("b.cedar", "y")]);
        assert_eq!(a, version_of([("b.cedar", "y"), ("a.cedar", "x")]));
        assert_ne!(a, version_of([("a.cedar", "xy"), ("b.cedar", "")]));
    }
}
