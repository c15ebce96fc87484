//! Policy decision latency with 10, 100, 1,000 and 10,000 policies: Airlock's indexed engine
//! against Cedar asked about the whole policy set, measured in the same run.
//!
//! Run: `cargo bench -p airlock-core --bench policy`
//!
//! Each set has one resource per ten policies: per resource, permits for `request`, `approve` and
//! `auto_approve` by several groups, with conditions on the context, plus five policies that
//! apply to every resource (they land in every bucket). Decisions either ask about one resource
//! again and again (the working set stays in the CPU's caches) or spread uniformly over every
//! resource (each decision touches cold policies and entities). The bench uses the allocator
//! the `airlock` binary uses.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::str::FromStr;
use std::time::Instant;

use airlock_core::catalog::Catalog;
use airlock_core::ids::{GroupName, RoleName, UserName};
use airlock_core::policy::{Action, Facts, PolicyEngine, PolicySource, Principal};
use airlock_core::values::GrantDuration;
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WILDCARDS: usize = 5;

fn policies(count: usize) -> (String, usize) {
    let resources = (count / 10).max(1);
    let mut text = String::new();
    for i in 0..count.saturating_sub(WILDCARDS) {
        let r = i % resources;
        let (action, group) = match i % 3 {
            0 => ("request", "eng"),
            1 => ("approve", "sre"),
            _ => ("auto_approve", "oncall"),
        };
        text.push_str(&format!(
            "permit(principal in Group::\"{group}{}\", action == Action::\"{action}\", resource == Resource::\"db-{r}\") \
             when {{ context.role == \"read\" && context.duration_seconds <= {} }};\n",
            i % 7,
            600 + i
        ));
    }
    for i in 0..WILDCARDS.min(count) {
        text.push_str(&format!(
            "forbid(principal, action, resource) when {{ resource.environment == \"frozen-{i}\" }};\n"
        ));
    }
    (text, resources)
}

fn catalog(resources: usize) -> Catalog {
    let mut text = String::new();
    for r in 0..resources {
        text.push_str(&format!(
            "[[resource]]\nname = \"db-{r}\"\nkind = \"postgres\"\nenvironment = \"prod\"\n[resource.roles.read]\n"
        ));
    }
    Catalog::parse(&text).expect("the generated catalog parses")
}

/// A small deterministic generator, so runs are comparable.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % below
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    samples[((samples.len() - 1) as f64 * p) as usize]
}

fn measure(iterations: usize, mut decide: impl FnMut(usize) -> bool) -> (f64, f64, usize) {
    let mut samples = Vec::with_capacity(iterations);
    let mut allowed = 0;
    for i in 0..iterations {
        let start = Instant::now();
        allowed += usize::from(black_box(decide(i)));
        samples.push(start.elapsed().as_nanos() as f64 / 1000.0);
    }
    (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99), allowed)
}

fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
}

fn main() {
    println!(
        "| policies | resources | one resource p50 µs | p99 µs | spread p50 µs | p99 µs | whole-set Cedar p50 µs | speed-up (spread p50) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for count in [10, 100, 1_000, 10_000] {
        let (text, resources) = policies(count);
        let catalog = catalog(resources);
        let engine = PolicyEngine::new(&[PolicySource { file: "bench.cedar".into(), text: text.clone() }], &catalog)
            .expect("the generated policies validate");
        let principal = Principal {
            name: UserName::parse("alice").unwrap(),
            groups: vec![GroupName::parse("eng0").unwrap(), GroupName::parse("sre1").unwrap()],
            service: false,
        };
        let role = RoleName::parse("read").unwrap();
        let resources_list: Vec<_> = catalog.resources().cloned().collect();
        let facts = |_: usize| Facts {
            role: &role,
            duration: GrantDuration::from_secs(900).unwrap(),
            reason: "bench",
            requester: &principal.name,
            now: time::macros::datetime!(2026-11-23 10:00 UTC),
            source_ip: "10.0.0.1".parse().unwrap(),
            incident: None,
            mfa: false,
            trusted_device: false,
        };
        let iterations = 20_000;
        let (one_p50, one_p99, _) =
            measure(iterations, |i| engine.decide(Action::Request, &principal, &resources_list[0], &facts(i)).allowed);
        let mut rng = Lcg(42);
        let (p50, p99, _) = measure(iterations, |i| {
            let resource = &resources_list[rng.next(resources_list.len())];
            engine.decide(Action::Request, &principal, resource, &facts(i)).allowed
        });

        // The same question put to Cedar with every policy, entities and context built the same way.
        let whole = PolicySet::from_str(&text).expect("the generated policies parse");
        let authorizer = Authorizer::new();
        let [user_type, group_type, resource_type, action_type] =
            ["User", "Group", "Resource", "Action"].map(|t| EntityTypeName::from_str(t).expect("a type name"));
        let request_action = uid(&action_type, "request");
        let mut rng = Lcg(42);
        let baseline_iterations = if count >= 10_000 { 200 } else { 2_000 };
        let (base_p50, _, _) = measure(baseline_iterations, |_| {
            let r = rng.next(resources_list.len());
            let groups: HashSet<EntityUid> = [uid(&group_type, "eng0"), uid(&group_type, "sre1")].into();
            let user = Entity::new(
                uid(&user_type, "alice"),
                HashMap::from([("service".into(), RestrictedExpression::new_bool(false))]),
                groups.clone(),
            )
            .unwrap();
            let resource = Entity::new(
                uid(&resource_type, &format!("db-{r}")),
                HashMap::from([
                    ("kind".into(), RestrictedExpression::new_string("postgres".into())),
                    ("environment".into(), RestrictedExpression::new_string("prod".into())),
                    ("tags".into(), RestrictedExpression::new_set([])),
                    ("sensitive".into(), RestrictedExpression::new_bool(false)),
                ]),
                HashSet::new(),
            )
            .unwrap();
            let context = Context::from_pairs([
                ("role".into(), RestrictedExpression::new_string("read".into())),
                ("duration_seconds".into(), RestrictedExpression::new_long(900)),
            ])
            .unwrap();
            let request = Request::new(user.uid(), request_action.clone(), resource.uid(), context, None).unwrap();
            let group_entities = groups.into_iter().map(|g| Entity::new_no_attrs(g, HashSet::new()));
            let entities = Entities::from_entities(group_entities.chain([user, resource]), None).unwrap();
            authorizer.is_authorized(&request, &whole, &entities).decision() == cedar_policy::Decision::Allow
        });
        println!(
            "| {count} | {resources} | {one_p50:.1} | {one_p99:.1} | {p50:.1} | {p99:.1} | {base_p50:.1} | {:.0}× |",
            base_p50 / p50.max(0.001)
        );
    }
}
