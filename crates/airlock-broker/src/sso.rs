//! Single sign-on: the sign-in flows that end in a broker login ([`crate::logins`]), over the
//! identity provider client of [`crate::oidc`].
//!
//! [`SingleSignOn`] keeps, in memory and for a short while, what each flow must remember between
//! two calls:
//! - a **browser sign-in** (authorization code with PKCE), by its OAuth `state`, from
//!   [`SingleSignOn::start_browser`] until the provider sends the browser back to the callback
//!   ([`SingleSignOn::finish_browser`]); at most [`SIGN_IN_TTL`];
//! - a **device sign-in** (RFC 8628), by an opaque random *handle* given to the client in place of
//!   the provider's device code (which never leaves the broker), from
//!   [`SingleSignOn::start_device`] through [`SingleSignOn::poll_device`]; at most [`SIGN_IN_TTL`]
//!   and never longer than the provider's own expiry;
//! - a **handoff code**: a browser sign-in that named a loopback `return_to` (the CLI's
//!   `airlock login --browser`) is answered with a redirect there carrying a one-time code rather
//!   than the tokens themselves; [`SingleSignOn::redeem_handoff`] exchanges it, once, within
//!   [`HANDOFF_TTL`].
//!
//! Each kind holds at most [`MAX_PENDING`] entries (expired ones are dropped first): past that,
//! new sign-ins are refused ([`SsoError::Busy`]), so nobody can fill the broker's memory by
//! starting sign-ins. The state is per process: a sign-in started at one broker must end at the
//! same one, and a restart forgets sign-ins under way (people start again).
//!
//! What the provider says becomes a [`SignedIn`]: its user name claim must be a valid
//! [`UserName`] or the sign-in is refused ([`SsoError::BadUserName`]); a group that is not a valid
//! [`GroupName`] is skipped with a warning in the log (an identity provider often sends groups
//! Airlock has no use for, such as Keycloak's `/full/paths` or names with spaces, and no policy
//! or configuration can name them). Refreshes ([`SingleSignOn::refresh`]) ask the provider again,
//! so group changes there reach the broker at every refresh.
//!
//! Time is the broker's clock. Codes, handles, states and tokens never appear in an error or a
//! log line.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use airlock_core::ids::{GroupName, UserName};
use reqwest::Url;
use time::OffsetDateTime;

use crate::broker::{Broker, BrokerError, ErrorKind};
use crate::config::OidcSection;
use crate::logins::{LoginTokens, SignedIn};
use crate::oidc::{DevicePoll, Identity, OidcClient, OidcError, OidcSettings, PendingLogin};
use crate::{outbound, secrets};

/// How long a browser or device sign-in may take.
pub const SIGN_IN_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a handoff code may wait to be redeemed.
pub const HANDOFF_TTL: Duration = Duration::from_secs(60);
/// How many sign-ins of one kind (browser, device, handoff) may be under way at once.
pub const MAX_PENDING: usize = 10_000;
/// What RFC 8628 (section 3.5) adds to the polling interval at each `slow_down`.
pub const SLOW_DOWN_BY: Duration = Duration::from_secs(5);
/// How long the broker waits for the identity provider.
const IDP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a sign-in, a handoff or a refresh did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error(
        "`return_to` must be a loopback URL: http://127.0.0.1:PORT/…, http://[::1]:PORT/… or http://localhost:PORT/…"
    )]
    ReturnTo,
    #[error("unknown or expired sign-in: the `state` belongs to no sign-in under way here (start again)")]
    UnknownSignIn,
    #[error("the callback carries neither `code` nor `error`")]
    BadCallback,
    #[error("unknown, used or expired handoff code")]
    UnknownHandoff,
    #[error("unknown device sign-in: it finished, expired, or was never started at this broker")]
    UnknownDevice,
    #[error("the device sign-in expired before it was approved: run `airlock login` again")]
    DeviceExpired,
    #[error("the device sign-in was refused at the identity provider")]
    DeviceDenied,
    #[error("too many sign-ins are under way at this broker; try again in a minute")]
    Busy,
    #[error("the identity provider refused the sign-in: {0}")]
    SignInRefused(String),
    #[error("the identity provider refused to renew the login ({0}); the login has ended: sign in again")]
    RefreshRefused(String),
    #[error("the identity provider's user name `{value}` (claim `{claim}`) is not a valid Airlock user name: {reason}")]
    BadUserName { claim: String, value: String, reason: String },
    #[error("the identity provider cannot be used: {0}")]
    Provider(OidcError),
    /// Boxed: a broker error is large, and sign-ins mostly fail for smaller reasons.
    #[error(transparent)]
    Broker(Box<BrokerError>),
}

impl From<BrokerError> for SsoError {
    fn from(error: BrokerError) -> Self {
        Self::Broker(Box::new(error))
    }
}

/// Why single sign-on could not be set up from `[identity.oidc]`.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("[identity.oidc] client secret: {0}")]
    Secret(#[from] secrets::SecretError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Discovery(#[from] OidcError),
}

/// How a browser sign-in ended at the callback.
#[derive(Debug)]
pub enum Finished {
    /// No `return_to`: the login's tokens, for the caller of the callback.
    Tokens(LoginTokens),
    /// Send the browser here: the sign-in's `return_to` with `code` (a handoff code), or with
    /// `error` when the provider refused.
    Redirect(Url),
}

/// What the provider sent back to the callback, as the query string says.
#[derive(Clone, Default)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("code", &self.code.as_ref().map(|_| "<redacted>"))
            .field("state", &self.state.as_ref().map(|_| "<redacted>"))
            .field("error", &self.error)
            .field("error_description", &self.error_description)
            .finish()
    }
}

/// A device sign-in under way, as the client sees it.
#[derive(Clone)]
pub struct DeviceSignIn {
    /// What the client polls with; not the provider's device code.
    pub handle: String,
    pub user_code: String,
    pub verification_uri: Url,
    pub verification_uri_complete: Option<Url>,
    pub interval: Duration,
    pub expires_in: Duration,
}

impl std::fmt::Debug for DeviceSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSignIn")
            .field("handle", &"<redacted>")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri.as_str())
            .field("interval", &self.interval)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The answer to one poll of a device sign-in that has not failed.
#[derive(Debug)]
pub enum DeviceStatus {
    /// Not answered yet: poll again after the interval.
    Pending,
    /// Polled too soon: add 5 seconds to the interval.
    SlowDown,
    Done(LoginTokens),
}

/// Single sign-on through one identity provider, for one broker.
pub struct SingleSignOn {
    broker: Broker,
    oidc: OidcClient,
    callback: Url,
    capacity: usize,
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for SingleSignOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleSignOn")
            .field("oidc", &self.oidc)
            .field("callback", &self.callback.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Pending {
    browser: HashMap<String, BrowserEntry>,
    device: HashMap<String, DeviceEntry>,
    handoff: HashMap<String, HandoffEntry>,
}

struct BrowserEntry {
    login: PendingLogin,
    return_to: Option<Url>,
    expires_at: OffsetDateTime,
}

struct DeviceEntry {
    device_code: String,
    interval: Duration,
    /// A poll before this is answered `slow_down` without asking the provider.
    next_poll_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

impl DeviceEntry {
    /// Polls come too often: wait [`SLOW_DOWN_BY`] longer between them, from `now`.
    fn slow_down(&mut self, now: OffsetDateTime) {
        self.interval += SLOW_DOWN_BY;
        self.next_poll_at = now + self.interval;
    }
}

struct HandoffEntry {
    tokens: LoginTokens,
    expires_at: OffsetDateTime,
}

trait Expiring {
    fn expires_at(&self) -> OffsetDateTime;
}

impl Expiring for BrowserEntry {
    fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }
}

impl Expiring for DeviceEntry {
    fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }
}

impl Expiring for HandoffEntry {
    fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }
}

/// Inserts `entry` under a fresh random key after dropping what has expired; refuses when
/// `capacity` entries are still live.
fn insert<T: Expiring>(
    map: &mut HashMap<String, T>,
    capacity: usize,
    now: OffsetDateTime,
    key: String,
    entry: T,
) -> Result<(), SsoError> {
    map.retain(|_, e| e.expires_at() > now);
    if map.len() >= capacity {
        return Err(SsoError::Busy);
    }
    map.insert(key, entry);
    Ok(())
}

/// Removes and returns the live entry under `key`; an expired one is removed and not returned.
fn take<T: Expiring>(map: &mut HashMap<String, T>, key: &str, now: OffsetDateTime) -> Option<T> {
    map.remove(key).filter(|e| e.expires_at() > now)
}

impl SingleSignOn {
    /// Single sign-on through `oidc` (already discovered), for `broker`, whose callback the
    /// provider sends browsers back to at `callback` (`…/v1/login/oidc/callback`, registered at
    /// the provider).
    pub fn new(broker: Broker, oidc: OidcClient, callback: Url) -> Self {
        Self { broker, oidc, callback, capacity: MAX_PENDING, pending: Mutex::new(Pending::default()) }
    }

    /// At most `capacity` sign-ins of each kind at once (default [`MAX_PENDING`]).
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Reads the client secret `[identity.oidc]` names and discovers the provider, with an HTTP
    /// client that follows no redirects (a redirect from the provider is an error, not a hop to
    /// wherever it points).
    pub async fn from_config(broker: Broker, section: &OidcSection) -> Result<Self, SetupError> {
        let settings = settings(section)?;
        let http = outbound::client_without_redirects(IDP_TIMEOUT)?;
        let oidc = OidcClient::discover(settings, http).await?;
        Ok(Self::new(broker, oidc, section.redirect_url.clone()))
    }

    /// The provider's client.
    pub fn oidc(&self) -> &OidcClient {
        &self.oidc
    }

    /// Where the provider sends browsers back to.
    pub fn callback_url(&self) -> &Url {
        &self.callback
    }

    /// Starts a browser sign-in: where to send the browser. With `return_to` (a loopback URL, see
    /// [`loopback_return_to`]), the callback redirects there with a handoff code.
    pub fn start_browser(&self, return_to: Option<&str>) -> Result<Url, SsoError> {
        let return_to = return_to.map(loopback_return_to).transpose()?;
        let (url, login) = self.oidc.authorization_url(&self.callback);
        let state = login.state().to_owned();
        let now = self.now();
        let entry = BrowserEntry { login, return_to, expires_at: now + SIGN_IN_TTL };
        insert(&mut self.lock().browser, self.capacity, now, state, entry)?;
        Ok(url)
    }

    /// Ends a browser sign-in at the callback. The `state` is spent whatever happens next: a
    /// replayed callback finds nothing. A sign-in that named a `return_to` goes back there in
    /// every case: with `code` (a handoff code), or with `error` and `error_description`, so that
    /// the client waiting there learns at once why it failed.
    pub async fn finish_browser(&self, callback: Callback, source_ip: IpAddr) -> Result<Finished, SsoError> {
        let state = callback.state.clone().ok_or(SsoError::UnknownSignIn)?;
        let now = self.now();
        let entry = take(&mut self.lock().browser, &state, now).ok_or(SsoError::UnknownSignIn)?;
        let provider_error = callback.error.clone();
        let outcome = self.complete_browser(entry.login, callback, &state, source_ip).await;
        let Some(mut return_to) = entry.return_to else {
            return outcome.map(Finished::Tokens);
        };
        let handoff = outcome.and_then(|tokens| {
            let handoff = random_key()?;
            let now = self.now();
            let entry = HandoffEntry { tokens, expires_at: now + HANDOFF_TTL };
            insert(&mut self.lock().handoff, self.capacity, now, handoff.clone(), entry)?;
            Ok(handoff)
        });
        match handoff {
            Ok(handoff) => {
                return_to.query_pairs_mut().append_pair("code", &handoff);
            }
            Err(error) => {
                let (code, description) = match (&error, provider_error) {
                    (SsoError::SignInRefused(_), Some(provider)) => (provider, error.to_string()),
                    (SsoError::Broker(e), _) if e.kind() == ErrorKind::Unavailable => {
                        ("temporarily_unavailable".to_owned(), e.to_string())
                    }
                    (SsoError::Broker(e), _) if e.kind() == ErrorKind::Internal => {
                        tracing::error!(error = %e, "a browser sign-in failed");
                        ("server_error".to_owned(), "internal error; the broker's log has the details".to_owned())
                    }
                    _ => ("access_denied".to_owned(), error.to_string()),
                };
                return_to.query_pairs_mut().append_pair("error", &code).append_pair("error_description", &description);
            }
        }
        Ok(Finished::Redirect(return_to))
    }

    /// The login a callback's answer gives.
    async fn complete_browser(
        &self,
        login: PendingLogin,
        callback: Callback,
        state: &str,
        source_ip: IpAddr,
    ) -> Result<LoginTokens, SsoError> {
        if let Some(error) = callback.error {
            return Err(SsoError::SignInRefused(describe(&error, callback.error_description.as_deref())));
        }
        let code = callback.code.ok_or(SsoError::BadCallback)?;
        let identity = self.oidc.finish(login, &code, state, &self.callback).await.map_err(sign_in_error)?;
        Ok(self.broker.sign_in(signed_in(identity, self.oidc.settings())?, source_ip).await?)
    }

    /// Exchanges a handoff code for its login's tokens, once.
    pub fn redeem_handoff(&self, code: &str) -> Result<LoginTokens, SsoError> {
        let now = self.now();
        take(&mut self.lock().handoff, code, now).map(|entry| entry.tokens).ok_or(SsoError::UnknownHandoff)
    }

    /// Starts a device sign-in at the provider.
    pub async fn start_device(&self) -> Result<DeviceSignIn, SsoError> {
        let device = self.oidc.device_start().await.map_err(sign_in_error)?;
        let expires_in = device.expires_in.min(SIGN_IN_TTL);
        let handle = random_key()?;
        let now = self.now();
        let entry = DeviceEntry {
            device_code: device.device_code,
            interval: device.interval,
            next_poll_at: now,
            expires_at: now + expires_in,
        };
        insert(&mut self.lock().device, self.capacity, now, handle.clone(), entry)?;
        Ok(DeviceSignIn {
            handle,
            user_code: device.user_code,
            verification_uri: device.verification_uri,
            verification_uri_complete: device.verification_uri_complete,
            interval: device.interval,
            expires_in,
        })
    }

    /// Asks once whether the person answered the device sign-in of `handle`. A poll sooner than
    /// the interval after the last one is answered [`DeviceStatus::SlowDown`] without asking the
    /// provider. Once done, refused or expired, the handle is spent.
    pub async fn poll_device(&self, handle: &str, source_ip: IpAddr) -> Result<DeviceStatus, SsoError> {
        let now = self.now();
        let device_code = {
            let mut pending = self.lock();
            let Some(entry) = pending.device.get_mut(handle) else {
                return Err(SsoError::UnknownDevice);
            };
            if entry.expires_at <= now {
                pending.device.remove(handle);
                return Err(SsoError::DeviceExpired);
            }
            if now < entry.next_poll_at {
                entry.slow_down(now);
                return Ok(DeviceStatus::SlowDown);
            }
            entry.next_poll_at = now + entry.interval;
            entry.device_code.clone()
        };
        let answer = self.oidc.device_poll(&device_code).await;
        let forget = || self.lock().device.remove(handle);
        match answer {
            Ok(DevicePoll::Pending) => Ok(DeviceStatus::Pending),
            Ok(DevicePoll::SlowDown) => {
                if let Some(entry) = self.lock().device.get_mut(handle) {
                    entry.slow_down(self.now());
                }
                Ok(DeviceStatus::SlowDown)
            }
            Ok(DevicePoll::Denied) => {
                forget();
                Err(SsoError::DeviceDenied)
            }
            Ok(DevicePoll::Expired) => {
                forget();
                Err(SsoError::DeviceExpired)
            }
            Ok(DevicePoll::Done(identity)) => {
                // Spent before the login begins: a racing poll of the same handle finds nothing.
                if forget().is_none() {
                    return Err(SsoError::UnknownDevice);
                }
                let who = signed_in(identity, self.oidc.settings())?;
                Ok(DeviceStatus::Done(self.broker.sign_in(who, source_ip).await?))
            }
            Err(error) => {
                // A refusal other than the device flow's own answers: the device code is no good.
                if matches!(error, OidcError::Refused { .. }) {
                    forget();
                }
                Err(sign_in_error(error))
            }
        }
    }

    /// Renews a login with its refresh token, asking the provider again who the person is (their
    /// groups may have changed). A provider that refuses ends the login.
    pub async fn refresh(&self, refresh_token: &str) -> Result<LoginTokens, SsoError> {
        let oidc = &self.oidc;
        self.broker
            .refresh_login(refresh_token, |idp_refresh| async move {
                let identity = oidc.refresh(&idp_refresh).await.map_err(|error| match error {
                    OidcError::Refused { error, description } => {
                        SsoError::RefreshRefused(describe(&error, description.as_deref()))
                    }
                    other => SsoError::Provider(other),
                })?;
                signed_in(identity, oidc.settings())
            })
            .await
    }

    fn now(&self) -> OffsetDateTime {
        self.broker.clock().now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The map holds no invariant a panicking holder could break halfway.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The provider settings `[identity.oidc]` describes, with its client secret read.
pub fn settings(section: &OidcSection) -> Result<OidcSettings, secrets::SecretError> {
    let secret = secrets::read_named(&section.client_secret)?;
    let mut settings = OidcSettings::new(section.issuer.clone(), section.client_id.clone(), secret);
    settings.groups_claim = section.groups_claim.clone();
    settings.username_claim = section.username_claim.clone();
    if let Some(scopes) = &section.scopes {
        settings.scopes = scopes.clone();
    }
    Ok(settings)
}

/// Parses `text` as a URL on the caller's own machine that a sign-in may be handed back to:
/// `http` (a loopback listener has no certificate), a loopback host (`127.0.0.1`, `[::1]` or
/// `localhost`), an explicit port, no user or password, no fragment. Anything else could send the
/// handoff code to somebody else's server.
pub fn loopback_return_to(text: &str) -> Result<Url, SsoError> {
    let url = Url::parse(text).map_err(|_| SsoError::ReturnTo)?;
    // Parsing normalises the host (`127.1` and `0x7f.0.0.1` are written `127.0.0.1`).
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
    let plain = url.scheme() == "http"
        && url.port().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none();
    if loopback && plain { Ok(url) } else { Err(SsoError::ReturnTo) }
}

/// Who the provider says signed in, in Airlock's names. Groups that are no valid [`GroupName`] are
/// skipped, with a warning.
fn signed_in(identity: Identity, settings: &OidcSettings) -> Result<SignedIn, SsoError> {
    let name = UserName::parse(&identity.username).map_err(|e| SsoError::BadUserName {
        claim: settings.username_claim.clone(),
        value: identity.username.clone(),
        reason: e.to_string(),
    })?;
    let mut groups = Vec::with_capacity(identity.groups.len());
    for group in &identity.groups {
        match GroupName::parse(group) {
            Ok(group) => groups.push(group),
            Err(error) => tracing::warn!(
                user = %name,
                group = ?group,
                claim = %settings.groups_claim,
                %error,
                "a group from the identity provider is not a valid Airlock group name; skipped"
            ),
        }
    }
    Ok(SignedIn { subject: identity.subject, name, groups, idp_refresh: identity.refresh_token })
}

fn sign_in_error(error: OidcError) -> SsoError {
    match error {
        OidcError::Refused { error, description } => SsoError::SignInRefused(describe(&error, description.as_deref())),
        // A forged or mismatched state never reaches here (the state is the map's key), but
        // should it, it is the caller's fault, not the provider's.
        OidcError::StateMismatch => SsoError::UnknownSignIn,
        other => SsoError::Provider(other),
    }
}

fn describe(error: &str, description: Option<&str>) -> String {
    match description {
        Some(description) => format!("`{error}` ({description})"),
        None => format!("`{error}`"),
    }
}

/// 32 random bytes, hex: a key nobody can guess.
fn random_key() -> Result<String, SsoError> {
    Ok(hex::encode(secrets::random_bytes().map_err(BrokerError::from)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(return_to: &str, allowed: bool) {
        assert_eq!(loopback_return_to(return_to).is_ok(), allowed, "{return_to}");
    }

    #[test]
    fn only_loopback_return_urls_are_allowed() {
        check("http://127.0.0.1:53121/callback", true);
        check("http://127.0.0.1:53121/callback?state=abc", true);
        check("http://[::1]:53121/", true);
        check("http://localhost:8000/done", true);
        check("http://127.0.0.1/callback", false);
        check("https://127.0.0.1:53121/callback", false);
        check("http://127.0.0.2:53121/callback", false);
        check("http://localhost.evil.example:80/", false);
        check("http://evil.example:53121/", false);
        check("http://user:pw@127.0.0.1:53121/", false);
        check("http://127.0.0.1:53121/#fragment", false);
        check("http://127.0.0.1:53121@evil.example/", false);
        check("javascript:alert(1)", false);
        check("/relative", false);
        check("", false);
    }
}
