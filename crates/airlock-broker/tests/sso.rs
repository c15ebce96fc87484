//! Single sign-on end to end, against a real OpenID Connect provider (`oidc-provider` on Node.js,
//! started by the testkit): device and browser sign-ins become logins the broker authenticates,
//! with the provider's groups; handoff codes are single-use and short-lived; return URLs are
//! loopback only; refreshes follow the provider's groups and end the login when it refuses; what
//! the provider sends that Airlock cannot name is refused or skipped. A real SQLite store and a
//! manual clock (the provider keeps its own, real time).

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::clock::ManualClock;
use airlock_broker::logins::LoginTokens;
use airlock_broker::oidc::OidcClient;
use airlock_broker::sso::{
    Callback, DeviceSignIn, DeviceStatus, Finished, HANDOFF_TTL, SIGN_IN_TTL, SingleSignOn, SsoError,
};
use airlock_broker::{Broker, BrokerError, outbound};
use airlock_store::Store;
use airlock_testkit::oidc::{OidcAccount, OidcConfig, OidcProvider};
use reqwest::Url;
use tempfile::TempDir;
use time::OffsetDateTime;

const CALLBACK: &str = "http://127.0.0.1:8470/v1/login/oidc/callback";
const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

struct App {
    sso: SingleSignOn,
    broker: Broker,
    provider: OidcProvider,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

/// A broker on the quickstart with single sign-on through a fresh provider knowing `accounts`.
async fn spawn_with(accounts: Vec<OidcAccount>) -> App {
    let provider = OidcProvider::start(OidcConfig {
        redirect_uris: vec![Url::parse(CALLBACK).unwrap()],
        accounts,
        ..OidcConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let broker = common::quickstart_broker(store, dir.path(), clock.clone());
    let http = outbound::client_without_redirects(Duration::from_secs(10)).unwrap();
    let oidc = OidcClient::discover(provider.settings(), http).await.expect("the provider is discovered");
    let sso = SingleSignOn::new(broker.clone(), oidc, Url::parse(CALLBACK).unwrap());
    App { sso, broker, provider, clock, _dir: dir }
}

/// Accounts `alice` (`eng`) and `bob` (`sre`).
async fn spawn() -> App {
    spawn_with(OidcConfig::default().accounts).await
}

impl App {
    fn advance(&self, by: Duration) {
        self.clock.advance(time::Duration::try_from(by).unwrap());
    }

    /// The name and groups of whoever holds `tokens`' access token.
    async fn who(&self, tokens: &LoginTokens) -> (String, Vec<String>) {
        let (caller, _) =
            self.broker.authenticate(&tokens.access_token, IP, None).await.expect("the access token works");
        let mut groups: Vec<String> = caller.principal.groups.iter().map(ToString::to_string).collect();
        groups.sort();
        (caller.principal.name.to_string(), groups)
    }

    /// Polls once, after waiting the interval on the broker's clock.
    async fn poll(&self, device: &DeviceSignIn) -> Result<DeviceStatus, SsoError> {
        self.advance(device.interval);
        self.sso.poll_device(&device.handle, IP).await
    }

    /// Signs `sub` in through the device flow.
    async fn device_login(&self, sub: &str) -> LoginTokens {
        let device = self.sso.start_device().await.expect("a device sign-in starts");
        self.provider.approve_device(&device.user_code, sub).await;
        match self.poll(&device).await {
            Ok(DeviceStatus::Done(tokens)) => tokens,
            other => panic!("expected a login, got {other:?}"),
        }
    }

    /// Starts a browser sign-in and plays `sub` at the provider: what the callback receives.
    async fn browser(&self, sub: &str, return_to: Option<&str>) -> Callback {
        let authorize = self.sso.start_browser(return_to).expect("a browser sign-in starts");
        let back = self.provider.sign_in(&authorize, sub).await;
        assert_eq!(back.as_str().split('?').next(), Some(CALLBACK), "back at the broker's callback");
        Callback { code: query(&back, "code"), state: query(&back, "state"), ..Callback::default() }
    }
}

fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[track_caller]
fn refused<T: std::fmt::Debug>(outcome: Result<T, SsoError>) -> SsoError {
    outcome.expect_err("refused")
}

#[tokio::test]
async fn a_device_sign_in_becomes_a_login_with_the_providers_groups() {
    let app = spawn().await;
    let device = app.sso.start_device().await.expect("a device sign-in starts");
    assert!(device.verification_uri.as_str().starts_with(app.provider.issuer().as_str()));
    assert!(device.expires_in <= SIGN_IN_TTL && !device.user_code.is_empty());
    assert!(matches!(app.poll(&device).await, Ok(DeviceStatus::Pending)));
    // Polling sooner than the interval is answered at the broker, and the interval grows.
    assert!(matches!(app.sso.poll_device(&device.handle, IP).await, Ok(DeviceStatus::SlowDown)));
    app.provider.approve_device(&device.user_code, "sub-alice").await;
    app.advance(device.interval + Duration::from_secs(5));
    let tokens = match app.sso.poll_device(&device.handle, IP).await {
        Ok(DeviceStatus::Done(tokens)) => tokens,
        other => panic!("expected a login, got {other:?}"),
    };
    assert_eq!(app.who(&tokens).await, ("alice".to_owned(), vec!["eng".to_owned()]));
    assert_eq!(tokens.user.as_str(), "alice");
    // The handle is spent: the same sign-in gives no second login.
    assert!(matches!(refused(app.poll(&device).await), SsoError::UnknownDevice));
}

#[tokio::test]
async fn a_device_handle_answers_only_for_its_own_sign_in_and_not_after_it_expires() {
    let app = spawn().await;
    let first = app.sso.start_device().await.unwrap();
    let second = app.sso.start_device().await.unwrap();
    assert_ne!(first.handle, second.handle);
    app.provider.approve_device(&first.user_code, "sub-bob").await;
    // Approving the first sign-in does nothing for the second's handle.
    assert!(matches!(app.poll(&second).await, Ok(DeviceStatus::Pending)));
    let unknown = app.sso.poll_device(&"0".repeat(64), IP).await;
    assert!(matches!(refused(unknown), SsoError::UnknownDevice));
    assert!(matches!(app.sso.poll_device(&first.user_code, IP).await, Err(SsoError::UnknownDevice)));
    // Past its expiry a handle is refused, even though the person approved it.
    app.advance(SIGN_IN_TTL);
    assert!(matches!(refused(app.sso.poll_device(&first.handle, IP).await), SsoError::DeviceExpired));
    assert!(matches!(refused(app.sso.poll_device(&first.handle, IP).await), SsoError::UnknownDevice));
}

#[tokio::test]
async fn a_refused_device_sign_in_is_denied_once() {
    let app = spawn().await;
    let device = app.sso.start_device().await.unwrap();
    app.provider.deny_device(&device.user_code, "sub-bob").await;
    assert!(matches!(refused(app.poll(&device).await), SsoError::DeviceDenied));
    assert!(matches!(refused(app.poll(&device).await), SsoError::UnknownDevice));
}

#[tokio::test]
async fn a_browser_sign_in_gives_tokens_and_its_state_works_once() {
    let app = spawn().await;
    let callback = app.browser("sub-bob", None).await;
    let tokens = match app.sso.finish_browser(callback.clone(), IP).await {
        Ok(Finished::Tokens(tokens)) => tokens,
        other => panic!("expected tokens, got {other:?}"),
    };
    assert_eq!(app.who(&tokens).await, ("bob".to_owned(), vec!["sre".to_owned()]));
    // The same callback again (a replay): the state is spent.
    assert!(matches!(refused(app.sso.finish_browser(callback, IP).await), SsoError::UnknownSignIn));
    // A state the broker never gave.
    let mut forged = app.browser("sub-bob", None).await;
    forged.state = Some("forged-state".to_owned());
    assert!(matches!(refused(app.sso.finish_browser(forged, IP).await), SsoError::UnknownSignIn));
    let no_state = Callback { code: Some("a-code".to_owned()), ..Callback::default() };
    assert!(matches!(refused(app.sso.finish_browser(no_state, IP).await), SsoError::UnknownSignIn));
    // An expired sign-in.
    let late = app.browser("sub-bob", None).await;
    app.advance(SIGN_IN_TTL);
    assert!(matches!(refused(app.sso.finish_browser(late, IP).await), SsoError::UnknownSignIn));
}

#[tokio::test]
async fn a_sign_in_with_a_loopback_return_to_hands_off_a_single_use_short_lived_code() {
    let app = spawn().await;
    let return_to = "http://127.0.0.1:53121/callback?state=cli-state";
    let callback = app.browser("sub-alice", Some(return_to)).await;
    let redirect = match app.sso.finish_browser(callback, IP).await {
        Ok(Finished::Redirect(url)) => url,
        other => panic!("expected a redirect, got {other:?}"),
    };
    assert_eq!((redirect.host_str(), redirect.port(), redirect.path()), (Some("127.0.0.1"), Some(53121), "/callback"));
    assert_eq!(query(&redirect, "state").as_deref(), Some("cli-state"), "the client's own query is kept");
    let code = query(&redirect, "code").expect("a handoff code");
    let tokens = app.sso.redeem_handoff(&code).expect("the code is redeemed");
    assert_eq!(app.who(&tokens).await, ("alice".to_owned(), vec!["eng".to_owned()]));
    assert!(matches!(refused(app.sso.redeem_handoff(&code)), SsoError::UnknownHandoff), "single use");

    let callback = app.browser("sub-alice", Some("http://localhost:53121/")).await;
    let Ok(Finished::Redirect(redirect)) = app.sso.finish_browser(callback, IP).await else { panic!("a redirect") };
    let code = query(&redirect, "code").expect("a handoff code");
    app.advance(HANDOFF_TTL);
    assert!(matches!(refused(app.sso.redeem_handoff(&code)), SsoError::UnknownHandoff), "expired");
    assert!(matches!(refused(app.sso.redeem_handoff("")), SsoError::UnknownHandoff));
}

#[tokio::test]
async fn a_return_to_that_is_not_loopback_is_refused_before_anything_starts() {
    let app = spawn().await;
    for return_to in [
        "https://evil.example/callback",
        "http://evil.example:53121/callback",
        "http://127.0.0.1.evil.example:53121/",
        "http://127.0.0.1/no-port",
        "https://127.0.0.1:53121/",
        "//evil.example/",
    ] {
        assert!(matches!(refused(app.sso.start_browser(Some(return_to))), SsoError::ReturnTo), "{return_to}");
    }
}

#[tokio::test]
async fn a_providers_refusal_at_the_callback_goes_back_to_the_loopback_client() {
    let app = spawn().await;
    let authorize = app.sso.start_browser(Some("http://[::1]:53121/done")).unwrap();
    let state = query(&authorize, "state");
    let callback = Callback { state: state.clone(), error: Some("access_denied".to_owned()), ..Callback::default() };
    let Ok(Finished::Redirect(redirect)) = app.sso.finish_browser(callback, IP).await else { panic!("a redirect") };
    assert_eq!((query(&redirect, "error").as_deref(), query(&redirect, "code")), (Some("access_denied"), None));

    let authorize = app.sso.start_browser(None).unwrap();
    let callback =
        Callback { state: query(&authorize, "state"), error: Some("access_denied".to_owned()), ..Callback::default() };
    let error = refused(app.sso.finish_browser(callback, IP).await);
    assert!(matches!(&error, SsoError::SignInRefused(reason) if reason.contains("access_denied")), "{error}");
}

#[tokio::test]
async fn a_refresh_follows_the_providers_groups() {
    let app = spawn().await;
    let first = app.device_login("sub-alice").await;
    app.provider.set_groups("sub-alice", &["eng", "oncall"]).await;
    let second = app.sso.refresh(&first.refresh_token).await.expect("a refresh");
    assert_eq!((second.login, second.user.as_str()), (first.login, "alice"));
    assert_eq!(app.who(&second).await, ("alice".to_owned(), vec!["eng".to_owned(), "oncall".to_owned()]));
    app.provider.set_groups("sub-alice", &[]).await;
    let third = app.sso.refresh(&second.refresh_token).await.expect("the next refresh");
    assert_eq!(app.who(&third).await, ("alice".to_owned(), vec![]));
    // The last refresh token again: somebody copied it, and the login ends.
    let reused = refused(app.sso.refresh(&second.refresh_token).await);
    assert!(matches!(&reused, SsoError::Broker(e) if matches!(**e, BrokerError::RefreshRefused)), "{reused}");
    assert!(app.broker.authenticate(&third.access_token, IP, None).await.is_err(), "the login ended");
}

#[tokio::test]
async fn a_refresh_the_provider_refuses_ends_the_login() {
    let app = spawn().await;
    let tokens = app.browser("sub-bob", None).await;
    let Ok(Finished::Tokens(tokens)) = app.sso.finish_browser(tokens, IP).await else { panic!("tokens") };
    app.provider.remove_account("sub-bob").await;
    let error = refused(app.sso.refresh(&tokens.refresh_token).await);
    assert!(matches!(&error, SsoError::RefreshRefused(reason) if reason.contains("invalid_grant")), "{error}");
    let ended = app.broker.authenticate(&tokens.access_token, IP, None).await;
    assert!(matches!(ended, Err(BrokerError::Unauthenticated)), "the login ended: {ended:?}");
}

#[tokio::test]
async fn names_airlock_cannot_hold_are_refused_or_skipped() {
    let odd = OidcAccount {
        sub: "sub-odd".to_owned(),
        preferred_username: "Alice Smith".to_owned(),
        email: "alice.smith@example.com".to_owned(),
        groups: vec!["eng".to_owned()],
    };
    let erin = OidcAccount::new("erin", &["eng", "/org/Domain Users", "oncall"]);
    let app = spawn_with(vec![odd, erin]).await;
    let device = app.sso.start_device().await.unwrap();
    app.provider.approve_device(&device.user_code, "sub-odd").await;
    let error = refused(app.poll(&device).await);
    assert!(matches!(error, SsoError::BadUserName { .. }), "{error}");
    assert!(error.to_string().contains("`Alice Smith` (claim `preferred_username`)"), "{error}");
    // A group with no valid Airlock name is left out; the others count.
    let tokens = app.device_login("sub-erin").await;
    assert_eq!(app.who(&tokens).await, ("erin".to_owned(), vec!["eng".to_owned(), "oncall".to_owned()]));
}

#[tokio::test]
async fn a_local_account_is_not_taken_over_by_single_sign_on() {
    let app = spawn().await;
    app.broker.add_user(&"alice".parse().unwrap(), &[], false, "admin").await.unwrap();
    let callback = app.browser("sub-alice", None).await;
    let error = refused(app.sso.finish_browser(callback, IP).await);
    assert!(matches!(&error, SsoError::Broker(e) if matches!(**e, BrokerError::SignIn(_))), "{error}");
    // A loopback client is told why, at once, rather than left waiting.
    let callback = app.browser("sub-alice", Some("http://127.0.0.1:53121/cb")).await;
    let Ok(Finished::Redirect(redirect)) = app.sso.finish_browser(callback, IP).await else { panic!("a redirect") };
    assert_eq!((query(&redirect, "error").as_deref(), query(&redirect, "code")), (Some("access_denied"), None));
    let description = query(&redirect, "error_description").unwrap_or_default();
    assert!(description.contains("is a local user or service account here"), "{description}");
}

#[tokio::test]
async fn sign_ins_under_way_are_capped() {
    let mut app = spawn().await;
    app.sso =
        SingleSignOn::new(app.broker.clone(), app.sso.oidc().clone(), Url::parse(CALLBACK).unwrap()).with_capacity(2);
    app.sso.start_browser(None).unwrap();
    app.sso.start_browser(None).unwrap();
    assert!(matches!(refused(app.sso.start_browser(None)), SsoError::Busy));
    // Expired sign-ins make room.
    app.advance(SIGN_IN_TTL);
    app.sso.start_browser(None).expect("room again");
}
