//! Who is calling, proven: API tokens with scopes, expiry, rotation and revocation; logins with
//! refresh, reuse detection, inactivity and logout; TOTP enrollment and step-up, single-use
//! codes and their rate limit; break-glass and sensitive approvals that need a fresh factor.
//! A real SQLite store and a manual clock.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use airlock_broker::breakglass::BreakGlassInput;
use airlock_broker::broker::{RequestInput, Settings};
use airlock_broker::clock::{Clock, ManualClock};
use airlock_broker::logins::{SignInError, SignedIn};
use airlock_broker::{Broker, BrokerError, Caller};
use airlock_core::ids::{GroupName, UserName};
use airlock_core::mfa::MfaError;
use airlock_core::scope::{Scope, Scopes};
use airlock_core::values::{GrantDuration, Reason};
use airlock_store::Store;
use common::{quickstart_bundle, quickstart_settings};
use tempfile::TempDir;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use totp_rs::Totp;

const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);
const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

struct App {
    broker: Broker,
    clock: Arc<ManualClock>,
    dir: TempDir,
}

async fn spawn_with(settings: Settings, catalog_sensitive: bool) -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let mut bundle = quickstart_bundle();
    if catalog_sensitive {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart/catalog.toml"))
                .unwrap()
                .replace("environment = \"prod\"", "environment = \"prod\"\nsensitive = true");
        bundle.catalog = airlock_core::catalog::Catalog::parse(&text).unwrap();
    }
    let key = airlock_broker::secrets::load_or_create_key(dir.path()).unwrap();
    let broker = Broker::new(store, bundle, clock.clone() as Arc<dyn Clock>, settings, key);
    App { broker, clock, dir }
}

async fn spawn() -> App {
    spawn_with(quickstart_settings(), false).await
}

fn name(text: &str) -> UserName {
    text.parse().unwrap()
}

fn groups(names: &[&str]) -> Vec<GroupName> {
    names.iter().map(|g| g.parse().unwrap()).collect()
}

impl App {
    /// Adds `user` in `groups` and signs in with the API token they are given.
    async fn user(&self, user: &str, in_groups: &[&str]) -> (String, Caller) {
        let secret = self.broker.add_user(&name(user), &groups(in_groups), false, "admin").await.unwrap();
        let (caller, _) = self.broker.authenticate(&secret, IP, None).await.unwrap();
        (secret, caller)
    }

    async fn kinds(&self) -> Vec<String> {
        self.broker.audit_tail(&common::bob(), 1000).await.unwrap().into_iter().map(|r| r.kind).collect()
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

fn refused<T: std::fmt::Debug>(outcome: Result<T, BrokerError>) -> BrokerError {
    outcome.expect_err("refused")
}

#[tokio::test]
async fn api_tokens_carry_scopes_and_expiry_and_rotation_kills_the_old_one_at_once() {
    let app = spawn().await;
    let (first, alice) = app.user("alice", &["eng"]).await;
    let (_, scopes) = app.broker.authenticate(&first, IP, None).await.unwrap();
    assert_eq!(scopes, Scopes::All);
    assert!(alice.token.is_some() && alice.mfa_at.is_none());

    let ci_scopes = Scopes::parse(["request", "read"]).unwrap();
    let ci = app.broker.create_token(&name("alice"), &ci_scopes, Some(T0 + Duration::days(30)), "admin").await.unwrap();
    let (_, held) = app.broker.authenticate(&ci.secret, IP, None).await.unwrap();
    assert!(held.allows(Scope::Request) && !held.allows(Scope::Review));

    // The attack: a token copied before rotation is useless from the moment of rotation.
    app.advance(Duration::days(10));
    let rotated = app.broker.rotate_token(ci.token.id, "admin").await.unwrap();
    assert!(matches!(refused(app.broker.authenticate(&ci.secret, IP, None).await), BrokerError::Unauthenticated));
    let (caller, held) = app.broker.authenticate(&rotated.secret, IP, None).await.unwrap();
    assert_eq!((caller.principal.name.as_str(), held), ("alice", ci_scopes));
    // As long a life as the old one was given, from the rotation.
    assert_eq!(rotated.token.expires_at, Some(T0 + Duration::days(40)));
    assert!(matches!(refused(app.broker.rotate_token(ci.token.id, "admin").await), BrokerError::TokenEnded(_)));

    app.advance(Duration::days(30));
    assert!(matches!(refused(app.broker.authenticate(&rotated.secret, IP, None).await), BrokerError::Unauthenticated));
    app.broker.authenticate(&first, IP, None).await.expect("the first token has no expiry");

    app.broker.revoke_token(alice.token.unwrap(), "admin").await.unwrap();
    assert!(matches!(refused(app.broker.authenticate(&first, IP, None).await), BrokerError::Unauthenticated));
    let past = app.broker.create_token(&name("alice"), &Scopes::All, Some(T0), "admin").await;
    assert!(matches!(refused(past), BrokerError::TokenExpiryPast));
    let unknown = app.broker.revoke_token(uuid::Uuid::now_v7().to_string().parse().unwrap(), "admin").await;
    assert!(matches!(refused(unknown), BrokerError::TokenNotFound(_)));

    let listed = app.broker.tokens_of(&name("alice")).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|t| t.ended_at.is_some() || t.expires_at.is_some_and(|e| e <= app.clock.now())));
    let kinds = app.kinds().await;
    for kind in ["token.created", "token.rotated", "token.revoked"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} recorded in {kinds:?}");
    }
}

fn signed_in(subject: &str, user: &str, in_groups: &[&str], idp_refresh: Option<&str>) -> SignedIn {
    SignedIn {
        subject: subject.into(),
        name: name(user),
        groups: groups(in_groups),
        idp_refresh: idp_refresh.map(str::to_owned),
    }
}

/// An identity provider that says the person is now in `groups`.
fn idp_says(
    subject: &'static str,
    user: &'static str,
    in_groups: &'static [&'static str],
) -> impl FnOnce(String) -> std::future::Ready<Result<SignedIn, BrokerError>> {
    move |presented| {
        assert_eq!(presented, "idp-refresh-1", "the sealed provider token opens to what was given");
        std::future::ready(Ok(signed_in(subject, user, in_groups, Some("idp-refresh-2"))))
    }
}

fn no_idp(_: String) -> std::future::Ready<Result<SignedIn, BrokerError>> {
    panic!("a login without a provider refresh token asks no provider")
}

#[tokio::test]
async fn a_login_provisions_follows_the_providers_groups_and_refreshes_once_per_token() {
    let app = spawn().await;
    let login = app.broker.sign_in(signed_in("sub-1", "frank", &["eng"], Some("idp-refresh-1")), IP).await.unwrap();
    let (frank, _) = app.broker.authenticate(&login.access_token, IP, None).await.unwrap();
    assert_eq!(frank.principal.groups, groups(&["eng"]));
    assert_eq!(login.expires_at, T0 + Duration::hours(12));

    // The access token lives 15 minutes; the refresh gives a new pair and new groups.
    app.advance(Duration::minutes(16));
    assert!(matches!(
        refused(app.broker.authenticate(&login.access_token, IP, None).await),
        BrokerError::Unauthenticated
    ));
    let next =
        app.broker.refresh_login(&login.refresh_token, idp_says("sub-1", "frank", &["eng", "sre"])).await.unwrap();
    let (frank, _) = app.broker.authenticate(&next.access_token, IP, None).await.unwrap();
    assert_eq!(frank.principal.groups, groups(&["eng", "sre"]));
    assert_eq!((next.login, next.expires_at), (login.login, login.expires_at));

    // The attack: the first refresh token, copied, presented again. The login ends for both.
    let replay = app.broker.refresh_login(&login.refresh_token, no_idp).await;
    assert!(matches!(refused(replay), BrokerError::RefreshRefused));
    assert!(matches!(
        refused(app.broker.authenticate(&next.access_token, IP, None).await),
        BrokerError::Unauthenticated
    ));
    assert!(matches!(
        refused(app.broker.refresh_login(&next.refresh_token, no_idp).await),
        BrokerError::RefreshRefused
    ));

    // Signing in again finds the same person by subject, whatever name the provider sends now.
    let again = app.broker.sign_in(signed_in("sub-1", "frank2", &["eng"], None), IP).await.unwrap();
    assert_eq!(again.user, name("frank"));
    let kinds = app.kinds().await;
    for kind in ["user.added", "login.started", "user.groups_changed", "login.ended"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} recorded in {kinds:?}");
    }
}

#[tokio::test]
async fn leaving_a_group_at_the_identity_provider_ends_the_grants_it_gave() {
    let app = spawn().await;
    let login =
        app.broker.sign_in(signed_in("sub-1", "frank", &["eng", "oncall"], Some("idp-refresh-1")), IP).await.unwrap();
    let (frank, _) = app.broker.authenticate(&login.access_token, IP, None).await.unwrap();
    let ask = RequestInput {
        resource: "demo-db".parse().unwrap(),
        role: "read".parse().unwrap(),
        duration: GrantDuration::parse("30m").unwrap(),
        reason: Reason::parse("replication lag").unwrap(),
        incident: None,
    };
    let (_, grant) = app.broker.create_request(&frank, ask).await.unwrap();
    let grant = grant.expect("on call: read at once");
    let mut changes = app.broker.watch_grants();
    changes.borrow_and_update();

    // Moved to sales at the provider: the next refresh follows, and the grant ends with it.
    app.advance(Duration::minutes(5));
    app.broker.refresh_login(&login.refresh_token, idp_says("sub-1", "frank", &["sales"])).await.unwrap();
    let stored = app.broker.store().grant(&grant.id.to_string()).await.unwrap().unwrap();
    assert_eq!(stored.state, airlock_core::lifecycle::GrantState::Revoked);
    assert_eq!(stored.closure.and_then(|c| c.reason).as_deref(), Some(airlock_broker::logins::GROUPS_CHANGED));
    assert!(changes.has_changed().unwrap(), "gateways are told at once");
}

#[tokio::test]
async fn single_sign_on_may_not_take_over_a_local_account_or_anothers_name() {
    let app = spawn().await;
    app.user("alice", &["eng"]).await;
    let takeover = app.broker.sign_in(signed_in("sub-9", "alice", &["sre"], None), IP).await;
    assert!(matches!(refused(takeover), BrokerError::SignIn(SignInError::LocalAccount(_))));
    app.broker.sign_in(signed_in("sub-1", "frank", &["eng"], None), IP).await.unwrap();
    let impostor = app.broker.sign_in(signed_in("sub-2", "frank", &["sre"], None), IP).await;
    assert!(matches!(refused(impostor), BrokerError::SignIn(SignInError::NameTaken(_))));
}

#[tokio::test]
async fn logins_end_at_logout_when_idle_at_their_end_and_when_the_provider_refuses() {
    let app = spawn().await;
    let first = app.broker.sign_in(signed_in("sub-1", "frank", &["eng"], None), IP).await.unwrap();
    let (frank, _) = app.broker.authenticate(&first.access_token, IP, None).await.unwrap();
    app.broker.logout(&frank).await.unwrap();
    assert!(matches!(
        refused(app.broker.authenticate(&first.access_token, IP, None).await),
        BrokerError::Unauthenticated
    ));
    assert!(matches!(
        refused(app.broker.refresh_login(&first.refresh_token, no_idp).await),
        BrokerError::RefreshRefused
    ));

    // Idle: unused for 30 minutes, the login ends, and the scheduler's pass records it.
    let idle = app.broker.sign_in(signed_in("sub-1", "frank", &["eng"], None), IP).await.unwrap();
    app.advance(Duration::minutes(31));
    assert!(matches!(
        refused(app.broker.refresh_login(&idle.refresh_token, no_idp).await),
        BrokerError::RefreshRefused
    ));
    assert_eq!(app.broker.end_lapsed_logins().await.unwrap(), 1);
    assert_eq!(app.broker.end_lapsed_logins().await.unwrap(), 0);

    // Kept busy by refreshes, a login still ends 12 hours after it began.
    let busy = app.broker.sign_in(signed_in("sub-1", "frank", &["eng"], None), IP).await.unwrap();
    let mut refresh = busy.refresh_token;
    for _ in 0..(12 * 60 / 14) {
        app.advance(Duration::minutes(14));
        refresh = app.broker.refresh_login(&refresh, no_idp).await.unwrap().refresh_token;
    }
    app.advance(Duration::minutes(14));
    assert!(matches!(refused(app.broker.refresh_login(&refresh, no_idp).await), BrokerError::RefreshRefused));

    // The provider refusing to renew (the person left the company) ends the login.
    let left = app.broker.sign_in(signed_in("sub-1", "frank", &["eng"], Some("idp-refresh-1")), IP).await.unwrap();
    let provider_refuses = |_| std::future::ready(Err(BrokerError::RefreshRefused));
    assert!(app.broker.refresh_login(&left.refresh_token, provider_refuses).await.is_err());
    assert!(matches!(
        refused(app.broker.authenticate(&left.access_token, IP, None).await),
        BrokerError::Unauthenticated
    ));
}

#[tokio::test]
async fn disabling_a_user_ends_their_tokens_and_logins_with_their_grants() {
    let app = spawn().await;
    let (token, _) = app.user("frank", &["eng"]).await;
    let login = app.broker.sign_in(signed_in("sub-1", "gina", &["eng"], None), IP).await.unwrap();
    let done = app.broker.disable_user(&name("frank"), "admin").await.unwrap();
    assert_eq!(done.tokens_ended, 1);
    let done = app.broker.disable_user(&name("gina"), "admin").await.unwrap();
    assert_eq!(done.tokens_ended, 1);
    for bearer in [&token, &login.access_token] {
        assert!(matches!(refused(app.broker.authenticate(bearer, IP, None).await), BrokerError::Unauthenticated));
    }
    let back = app.broker.sign_in(signed_in("sub-1", "gina", &["eng"], None), IP).await;
    assert!(matches!(refused(back), BrokerError::UserDisabled(_)));
}

/// The authenticator app of the enrollment `uri`.
fn app_of(uri: &str) -> Totp {
    Totp::from_url(uri).expect("an otpauth URI")
}

fn code(app: &Totp, at: OffsetDateTime) -> String {
    app.generate(at.unix_timestamp() as u64).to_string()
}

#[tokio::test]
async fn totp_enrollment_step_up_single_use_codes_and_the_rate_limit() {
    let app = spawn().await;
    let (token, alice) = app.user("alice", &["eng"]).await;
    assert!(matches!(refused(app.broker.verify_mfa(&alice, "123456").await), BrokerError::MfaNotEnrolled));
    let uri = app.broker.enroll_mfa(&alice).await.unwrap();
    assert!(uri.starts_with("otpauth://totp/Airlock:alice?"), "{uri}");
    let phone = app_of(&uri);

    // The seed is stored sealed: nothing in the database holds it in the clear.
    let secret = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let database = std::fs::read(app.dir.path().join("airlock.db")).unwrap();
    assert!(!String::from_utf8_lossy(&database).contains(&secret));

    assert!(matches!(refused(app.broker.confirm_mfa(&alice, "000000").await), BrokerError::Mfa(MfaError::Wrong)));
    app.broker.confirm_mfa(&alice, &code(&phone, app.clock.now())).await.unwrap();
    let (alice, _) = app.broker.authenticate(&token, IP, None).await.unwrap();
    assert_eq!(alice.mfa_at, Some(T0), "the first code counts as a step-up");
    assert!(matches!(refused(app.broker.enroll_mfa(&alice).await), BrokerError::MfaAlreadyEnrolled));

    // The attack: a code seen over the shoulder, used again inside its window.
    app.advance(Duration::seconds(40));
    let now = app.clock.now();
    app.broker.verify_mfa(&alice, &code(&phone, now)).await.unwrap();
    let replay = app.broker.verify_mfa(&alice, &code(&phone, now)).await;
    assert!(matches!(refused(replay), BrokerError::Mfa(MfaError::Replayed)));

    // Guessing: five wrong codes (the wrong confirmation and the replay count), then even the
    // right one is refused until five minutes after the first.
    for _ in 0..3 {
        assert!(matches!(refused(app.broker.verify_mfa(&alice, "000000").await), BrokerError::Mfa(MfaError::Wrong)));
    }
    app.advance(Duration::seconds(30));
    let locked = app.broker.verify_mfa(&alice, &code(&phone, app.clock.now())).await;
    assert!(matches!(refused(locked), BrokerError::Mfa(MfaError::TooManyAttempts { .. })));
    app.advance(Duration::minutes(5));
    app.broker.verify_mfa(&alice, &code(&phone, app.clock.now())).await.unwrap();

    let kinds = app.kinds().await;
    for kind in ["mfa.enrolled", "mfa.verified", "mfa.refused"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} recorded in {kinds:?}");
    }
    let tail = app.broker.audit_tail(&common::bob(), 1000).await.unwrap();
    assert!(tail.iter().all(|r| !r.details.contains(&secret)), "the seed is never recorded");

    app.broker.reset_mfa(&name("alice"), "admin").await.unwrap();
    assert!(matches!(refused(app.broker.verify_mfa(&alice, "123456").await), BrokerError::MfaNotEnrolled));
}

fn emergency() -> BreakGlassInput {
    BreakGlassInput {
        resource: "demo-db".parse().unwrap(),
        role: "write".parse().unwrap(),
        duration: None,
        reason: Reason::parse("orders table is down, INC-1").unwrap(),
        incident: None,
    }
}

#[tokio::test]
async fn break_glass_and_sensitive_approvals_need_a_fresh_second_factor() {
    let mut settings = quickstart_settings();
    settings.mfa = Default::default();
    let app = spawn_with(settings, true).await;
    let (dana_token, dana) = app.user("dana", &["eng", "oncall"]).await;
    let refused_glass = app.broker.break_glass(&dana, emergency()).await;
    assert!(matches!(refused(refused_glass), BrokerError::MfaRequired(_)));

    let phone = app_of(&app.broker.enroll_mfa(&dana).await.unwrap());
    app.broker.confirm_mfa(&dana, &code(&phone, app.clock.now())).await.unwrap();
    let (dana, _) = app.broker.authenticate(&dana_token, IP, None).await.unwrap();
    let broken = app.broker.break_glass(&dana, emergency()).await.expect("fresh: allowed");
    assert!(broken.request.mfa, "the policies were told, and the request records, a fresh factor");

    // Fifteen minutes later the proof is stale again.
    app.advance(Duration::minutes(15));
    let stale = app.broker.break_glass(&dana, emergency()).await;
    assert!(matches!(refused(stale), BrokerError::MfaRequired(_)));

    // demo-db is sensitive here: a reviewer must prove a factor to approve.
    let (_, alice) = app.user("alice", &["eng"]).await;
    let (bob_token, bob) = app.user("bob", &["sre"]).await;
    let ask = RequestInput {
        resource: "demo-db".parse().unwrap(),
        role: "read".parse().unwrap(),
        duration: GrantDuration::parse("30m").unwrap(),
        reason: Reason::parse("look at the orders table").unwrap(),
        incident: None,
    };
    let (request, _) = app.broker.create_request(&alice, ask).await.unwrap();
    let id = request.id.to_string();
    assert!(matches!(refused(app.broker.approve(&bob, &id, None).await), BrokerError::MfaRequired(_)));
    let bob_phone = app_of(&app.broker.enroll_mfa(&bob).await.unwrap());
    app.broker.confirm_mfa(&bob, &code(&bob_phone, app.clock.now())).await.unwrap();
    let (bob, _) = app.broker.authenticate(&bob_token, IP, None).await.unwrap();
    let (_, grant) = app.broker.approve(&bob, &id, None).await.unwrap();
    assert!(grant.is_some());
}
