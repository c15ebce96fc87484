//! Single sign-on against a real OpenID Connect provider (`oidc-provider` on Node.js, started by
//! the testkit): the browser flow with its refusals, the device flow, and refreshes.

use std::time::Duration;

use airlock_broker::oidc::{DevicePoll, Identity, OidcClient, OidcError, OidcSettings, PendingLogin};
use airlock_broker::outbound;
use airlock_testkit::oidc::{OidcConfig, OidcProvider};
use reqwest::Url;

async fn start() -> (OidcProvider, OidcClient) {
    let provider = OidcProvider::start(OidcConfig::default()).await;
    let client = discover(provider.settings()).await;
    (provider, client)
}

async fn discover(settings: OidcSettings) -> OidcClient {
    let http = outbound::client(Duration::from_secs(10)).expect("an HTTP client");
    OidcClient::discover(settings, http).await.expect("the provider is discovered")
}

/// The value of `name` in the query of `url`.
#[track_caller]
fn query(url: &Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no `{name}` in {url}"))
}

/// Sends `sub` to the provider, and returns what the callback receives: the code and the state.
async fn authorize(provider: &OidcProvider, client: &OidcClient, sub: &str) -> (PendingLogin, String, String) {
    let (url, pending) = client.authorization_url(provider.redirect_uri());
    let callback = provider.sign_in(&url, sub).await;
    assert_eq!(callback.path(), provider.redirect_uri().path(), "back at the redirect URI: {callback}");
    (pending, query(&callback, "code"), query(&callback, "state"))
}

async fn sign_in(provider: &OidcProvider, client: &OidcClient, sub: &str) -> Identity {
    let (pending, code, state) = authorize(provider, client, sub).await;
    client.finish(pending, &code, &state, provider.redirect_uri()).await.expect("the sign-in finishes")
}

#[track_caller]
fn assert_refused(result: Result<impl std::fmt::Debug, OidcError>, expected: &str) {
    match result {
        Err(OidcError::Refused { error, .. }) => assert_eq!(error, expected),
        other => panic!("expected a `{expected}` refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_browser_flow_gives_the_username_and_groups() {
    let (provider, client) = start().await;
    let alice = sign_in(&provider, &client, "sub-alice").await;
    assert_eq!(alice.subject, "sub-alice");
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
    assert_eq!(alice.groups, ["eng"]);
    assert!(alice.refresh_token.is_some(), "a refresh token is issued");
    assert!(!format!("{alice:?}").contains(alice.refresh_token.as_deref().unwrap_or_default()));
}

#[tokio::test]
async fn a_wrong_state_is_refused_before_the_code_is_used() {
    let (provider, client) = start().await;
    let (pending, code, state) = authorize(&provider, &client, "sub-alice").await;
    let forged = client.finish(pending.clone(), &code, "forged-state", provider.redirect_uri()).await;
    assert!(matches!(forged, Err(OidcError::StateMismatch)), "{forged:?}");
    let genuine = client.finish(pending, &code, &state, provider.redirect_uri()).await.expect("the code is still good");
    assert_eq!(genuine.username, "alice");
}

#[tokio::test]
async fn a_code_used_twice_is_refused() {
    let (provider, client) = start().await;
    let (pending, code, state) = authorize(&provider, &client, "sub-alice").await;
    client.finish(pending.clone(), &code, &state, provider.redirect_uri()).await.expect("the first use");
    assert_refused(client.finish(pending, &code, &state, provider.redirect_uri()).await, "invalid_grant");
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_refused() {
    let (provider, client) = start().await;
    let (pending, code, state) = authorize(&provider, &client, "sub-alice").await;
    let mut forged = serde_json::to_value(&pending).expect("a pending login serialises");
    forged["pkce_verifier"] = "another-verifier-of-forty-three-characters-or-more".into();
    let forged: PendingLogin = serde_json::from_value(forged).expect("a pending login deserialises");
    let error = client.finish(forged, &code, &state, provider.redirect_uri()).await;
    assert_refused(error, "invalid_grant");
    // The provider checks the verifier before it spends the code: the refusal was the verifier's.
    let genuine = client.finish(pending, &code, &state, provider.redirect_uri()).await.expect("the right verifier");
    assert_eq!(genuine.username, "alice");
}

#[tokio::test]
async fn the_device_flow_is_pending_then_done() {
    let (provider, client) = start().await;
    let device = client.device_start().await.expect("a device sign-in starts");
    assert!(device.verification_uri.as_str().starts_with(provider.issuer().as_str()));
    assert_eq!(client.device_poll(&device.device_code).await.expect("a poll"), DevicePoll::Pending);
    provider.approve_device(&device.user_code, "sub-bob").await;
    match client.device_poll(&device.device_code).await.expect("a poll") {
        DevicePoll::Done(bob) => {
            assert_eq!((bob.username.as_str(), bob.groups.as_slice()), ("bob", ["sre".to_owned()].as_slice()));
            assert!(bob.refresh_token.is_some(), "a refresh token is issued");
        }
        other => panic!("expected the sign-in to be done, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_device_sign_in_is_denied() {
    let (provider, client) = start().await;
    let device = client.device_start().await.expect("a device sign-in starts");
    provider.deny_device(&device.user_code, "sub-bob").await;
    assert_eq!(client.device_poll(&device.device_code).await.expect("a poll"), DevicePoll::Denied);
}

#[tokio::test]
async fn a_refresh_sees_new_groups_and_rotates_the_token() {
    let (provider, client) = start().await;
    let alice = sign_in(&provider, &client, "sub-alice").await;
    let first = alice.refresh_token.expect("a refresh token");
    provider.set_groups("sub-alice", &["eng", "oncall"]).await;
    let refreshed = client.refresh(&first).await.expect("a refresh");
    assert_eq!((refreshed.subject.as_str(), refreshed.username.as_str()), ("sub-alice", "alice"));
    assert_eq!(refreshed.groups, ["eng", "oncall"]);
    let second = refreshed.refresh_token.expect("the rotated refresh token");
    assert_ne!(first, second, "the provider rotates refresh tokens");
    provider.set_groups("sub-alice", &[]).await;
    let again = client.refresh(&second).await.expect("the rotated token refreshes");
    assert!(again.groups.is_empty());
}

#[tokio::test]
async fn a_removed_account_cannot_refresh() {
    let (provider, client) = start().await;
    let alice = sign_in(&provider, &client, "sub-alice").await;
    provider.remove_account("sub-alice").await;
    assert_refused(client.refresh(&alice.refresh_token.expect("a refresh token")).await, "invalid_grant");
}

#[tokio::test]
async fn missing_or_malformed_claims_are_named() {
    let provider = OidcProvider::start(OidcConfig::default()).await;
    let mut settings = provider.settings();
    settings.username_claim = "nickname".to_owned();
    let client = discover(settings).await;
    let (pending, code, state) = authorize(&provider, &client, "sub-alice").await;
    let error = client.finish(pending, &code, &state, provider.redirect_uri()).await.expect_err("no nickname");
    assert_eq!(error.to_string(), "the claim `nickname` is missing");

    let mut settings = provider.settings();
    settings.groups_claim = "email".to_owned();
    let client = discover(settings).await;
    let (pending, code, state) = authorize(&provider, &client, "sub-alice").await;
    let error = client.finish(pending, &code, &state, provider.redirect_uri()).await.expect_err("email is no array");
    assert_eq!(error.to_string(), "the claim `email` is not an array of strings");
}

#[tokio::test]
async fn an_id_token_for_another_nonce_is_refused() {
    let (provider, client) = start().await;
    let (pending, code, state) = authorize(&provider, &client, "sub-alice").await;
    let mut forged = serde_json::to_value(&pending).expect("a pending login serialises");
    forged["nonce"] = "another-sign-in's-nonce".into();
    let forged: PendingLogin = serde_json::from_value(forged).expect("a pending login deserialises");
    let error = client.finish(forged, &code, &state, provider.redirect_uri()).await;
    assert!(matches!(error, Err(OidcError::InvalidIdToken(_))), "{error:?}");
}
