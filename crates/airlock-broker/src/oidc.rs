//! Single sign-on: the broker as a client of an OpenID Connect identity provider.
//!
//! [`OidcClient::discover`] reads the provider's discovery document and signing keys once. People
//! sign in either in a browser (the authorization code flow with PKCE S256:
//! [`OidcClient::authorization_url`] then [`OidcClient::finish`] at the callback) or from a
//! terminal (the device flow: [`OidcClient::device_start`], then [`OidcClient::device_poll`] once
//! per interval, the caller driving the loop). Either gives an [`Identity`] read from the verified
//! ID token (signature against the provider's keys, issuer, audience, expiry, and the nonce of a
//! browser sign-in); [`OidcClient::refresh`] reads it afresh with a refresh token, so group
//! changes at the provider reach the broker. The keys are read once: a provider that rotates its
//! signing key needs a new [`OidcClient`].
//!
//! HTTP goes through the caller's `reqwest` client (see [`crate::outbound`]): openidconnect's own
//! reqwest support would pull a second reqwest, so a small adapter implements its
//! [`AsyncHttpClient`] over ours. The client should not follow redirects.
//!
//! Tokens, codes, the PKCE verifier and the client secret never appear in an error message or a
//! `Debug` output.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode,
    CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse, CoreSubjectIdentifierType,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::url::form_urlencoded;
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AsyncHttpClient, AuthenticationFlow, AuthorizationCode, Client,
    ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, HttpRequest, HttpResponse, IdTokenFields, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The grant type of a device access token request (RFC 8628, section 3.4).
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Where the identity provider is and how to read people's names and groups from it.
#[derive(Clone)]
pub struct OidcSettings {
    /// The issuer; its discovery document is at `{issuer}/.well-known/openid-configuration`.
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: String,
    /// The ID token claim holding the person's groups, an array of strings (default `groups`).
    pub groups_claim: String,
    /// The ID token claim holding the person's user name, a string (default `preferred_username`).
    pub username_claim: String,
    /// The scopes asked for; `openid` is always asked for (default: `openid profile email groups
    /// offline_access`).
    pub scopes: Vec<String>,
}

impl OidcSettings {
    /// Settings with the default claims and scopes.
    pub fn new(issuer: Url, client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            issuer,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            groups_claim: "groups".to_owned(),
            username_claim: "preferred_username".to_owned(),
            scopes: ["openid", "profile", "email", "groups", "offline_access"].map(str::to_owned).to_vec(),
        }
    }
}

impl fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("groups_claim", &self.groups_claim)
            .field("username_claim", &self.username_claim)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Who signed in, as the identity provider says.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The provider's `sub`: stable for the person at this provider.
    pub subject: String,
    /// The [`OidcSettings::username_claim`].
    pub username: String,
    pub email: Option<String>,
    /// The [`OidcSettings::groups_claim`]; empty when the token has no such claim.
    pub groups: Vec<String>,
    /// The refresh token to use next: the provider's new one when it rotated it, otherwise the
    /// one just used; `None` when the provider gave none.
    pub refresh_token: Option<String>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.subject)
            .field("username", &self.username)
            .field("email", &self.email)
            .field("groups", &self.groups)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What a browser sign-in must remember between the redirect to the provider and the callback.
/// Secret: keep it server-side (or encrypted), once, and drop it after [`OidcClient::finish`].
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    state: String,
    nonce: String,
    pkce_verifier: String,
}

impl PendingLogin {
    /// The OAuth `state` the provider returns to the callback: what names this sign-in there.
    pub fn state(&self) -> &str {
        &self.state
    }
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingLogin(<redacted>)")
    }
}

/// A device sign-in under way: show `user_code` and `verification_uri` to the person, keep
/// `device_code` for [`OidcClient::device_poll`] (secret), and poll every `interval`.
#[derive(Clone)]
pub struct DeviceStart {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: Url,
    /// The verification page with the user code filled in, when the provider offers one.
    pub verification_uri_complete: Option<Url>,
    pub interval: Duration,
    pub expires_in: Duration,
}

impl fmt::Debug for DeviceStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceStart")
            .field("device_code", &"<redacted>")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri.as_str())
            .field("interval", &self.interval)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The answer to one poll of a device sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePoll {
    /// The person has not answered yet: poll again after the interval.
    Pending,
    /// Polling too often: add 5 seconds to the interval (RFC 8628, section 3.5).
    SlowDown,
    Done(Identity),
    /// The person refused.
    Denied,
    /// The device code expired before the person answered.
    Expired,
}

/// Why a sign-in or a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("cannot discover the identity provider at `{issuer}`: {reason}")]
    Discovery { issuer: String, reason: String },
    #[error("the identity provider has no token endpoint")]
    NoTokenEndpoint,
    #[error("the identity provider offers no device sign-in")]
    NoDeviceFlow,
    #[error("the identity provider has no userinfo endpoint and returned no ID token")]
    NoUserInfo,
    #[error("cannot reach the identity provider: {0}")]
    Unreachable(String),
    #[error("the identity provider refused: `{error}`{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused { error: String, description: Option<String> },
    #[error("the identity provider's answer is malformed: {0}")]
    Malformed(String),
    #[error("the state returned to the callback is not the sign-in's")]
    StateMismatch,
    #[error("the identity provider returned no ID token")]
    MissingIdToken,
    #[error("the ID token is not valid: {0}")]
    InvalidIdToken(String),
    #[error("the identity provider's user information is not valid: {0}")]
    InvalidUserInfo(String),
    #[error("the claim `{0}` is missing")]
    MissingClaim(String),
    #[error("the claim `{claim}` is not {expected}")]
    InvalidClaim { claim: String, expected: &'static str },
}

/// Every claim beyond the standard ones, so that the groups and user name claims can be named in
/// the settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OtherClaims(serde_json::Map<String, Value>);

impl AdditionalClaims for OtherClaims {}

/// The discovery document's `device_authorization_endpoint` (RFC 8628), if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}

impl AdditionalProviderMetadata for DeviceEndpoint {}

type Metadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Tokens = StandardTokenResponse<
    IdTokenFields<
        OtherClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type Provider<HasDeviceAuthUrl = EndpointNotSet> = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    HasDeviceAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// openidconnect's HTTP client trait over our reqwest client.
#[derive(Clone)]
struct Http(reqwest::Client);

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = reqwest::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, reqwest::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.0.execute(reqwest::Request::try_from(request)?).await?;
            let mut answer = HttpResponse::new(Vec::new());
            *answer.status_mut() = response.status();
            *answer.headers_mut() = response.headers().clone();
            *answer.body_mut() = response.bytes().await?.to_vec();
            Ok(answer)
        })
    }
}

/// The broker's client of one identity provider.
#[derive(Clone)]
pub struct OidcClient {
    settings: OidcSettings,
    provider: Provider,
    device_endpoint: Option<DeviceAuthorizationUrl>,
    http: Http,
}

impl fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcClient").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl OidcClient {
    /// Reads the provider's discovery document and its signing keys (JWKS).
    pub async fn discover(settings: OidcSettings, http: reqwest::Client) -> Result<Self, OidcError> {
        let http = Http(http);
        let issuer = settings.issuer.as_str();
        let discovery = |reason: String| OidcError::Discovery { issuer: issuer.to_owned(), reason };
        // `Url` writes an empty path as `/`, and issuers are compared as strings: most have no
        // trailing slash, some (Auth0) do, so a bare origin is tried both ways.
        let mut candidates = vec![issuer.to_owned()];
        if settings.issuer.path() == "/" && settings.issuer.query().is_none() {
            candidates.insert(0, issuer.trim_end_matches('/').to_owned());
        }
        let mut last = String::new();
        let mut found = None;
        for candidate in candidates {
            let issuer_url = IssuerUrl::new(candidate).map_err(|e| discovery(e.to_string()))?;
            match Metadata::discover_async(issuer_url, &http).await {
                Ok(metadata) => {
                    found = Some(metadata);
                    break;
                }
                Err(openidconnect::DiscoveryError::Parse(parse)) => {
                    last = format!("malformed document at `{}`", parse.path());
                }
                Err(e) => last = chain(&e),
            }
        }
        let metadata = found.ok_or_else(|| discovery(last))?;
        let device_endpoint = metadata.additional_metadata().device_authorization_endpoint.clone();
        let provider = Provider::from_provider_metadata(
            metadata,
            ClientId::new(settings.client_id.clone()),
            Some(ClientSecret::new(settings.client_secret.clone())),
        );
        Ok(Self { settings, provider, device_endpoint, http })
    }

    /// The settings this client was discovered with.
    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// Where to send the person's browser, and what to keep until the provider sends it back to
    /// `redirect_uri` (which must be registered with the provider, exactly).
    pub fn authorization_url(&self, redirect_uri: &Url) -> (Url, PendingLogin) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = self
            .provider
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.scopes())
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(RedirectUrl::from_url(redirect_uri.clone())))
            .url();
        let pending = PendingLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        };
        (url, pending)
    }

    /// Ends a browser sign-in at the callback: checks that `returned_state` is the sign-in's,
    /// exchanges `code` with the PKCE verifier, and verifies the ID token with the sign-in's nonce.
    pub async fn finish(
        &self,
        pending: PendingLogin,
        code: &str,
        returned_state: &str,
        redirect_uri: &Url,
    ) -> Result<Identity, OidcError> {
        if !same(pending.state.as_bytes(), returned_state.as_bytes()) {
            return Err(OidcError::StateMismatch);
        }
        let tokens = self
            .provider
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|_| OidcError::NoTokenEndpoint)?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
            .set_redirect_uri(Cow::Owned(RedirectUrl::from_url(redirect_uri.clone())))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let nonce = Nonce::new(pending.nonce);
        let id_token = tokens.id_token().ok_or(OidcError::MissingIdToken)?;
        let claims = id_token.claims(&self.provider.id_token_verifier(), &nonce).map_err(invalid_id_token)?;
        let claims = serde_json::to_value(claims).map_err(|_| OidcError::InvalidIdToken("unreadable claims".into()))?;
        self.identity(&claims, tokens.refresh_token().map(|t| t.secret().clone()))
    }

    /// Starts a device sign-in.
    pub async fn device_start(&self) -> Result<DeviceStart, OidcError> {
        let endpoint = self.device_endpoint.clone().ok_or(OidcError::NoDeviceFlow)?;
        let provider = self.provider.clone().set_device_authorization_url(endpoint);
        let details: CoreDeviceAuthorizationResponse = provider
            .exchange_device_code()
            .add_scopes(self.scopes())
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        Ok(DeviceStart {
            device_code: details.device_code().secret().clone(),
            user_code: details.user_code().secret().clone(),
            verification_uri: details.verification_uri().url().clone(),
            verification_uri_complete: details
                .verification_uri_complete()
                .and_then(|complete| Url::parse(complete.secret()).ok()),
            interval: details.interval(),
            expires_in: details.expires_in(),
        })
    }

    /// Asks the provider once whether the person answered the device sign-in of `device_code`.
    pub async fn device_poll(&self, device_code: &str) -> Result<DevicePoll, OidcError> {
        let token_url = self.provider.token_uri().ok_or(OidcError::NoTokenEndpoint)?;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", DEVICE_CODE_GRANT)
            .append_pair("device_code", device_code)
            .finish();
        // RFC 6749, section 2.3.1: the client's id and secret are form-encoded, then sent as Basic.
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let response = self
            .http
            .0
            .post(token_url.url().clone())
            .basic_auth(encode(&self.settings.client_id), Some(encode(&self.settings.client_secret)))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(chain(&e)))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| OidcError::Unreachable(chain(&e)))?;
        if !status.is_success() {
            let refusal: Refusal = serde_json::from_slice(&body)
                .map_err(|_| OidcError::Malformed(format!("status {status} without an OAuth error")))?;
            return match refusal.error.as_str() {
                "authorization_pending" => Ok(DevicePoll::Pending),
                "slow_down" => Ok(DevicePoll::SlowDown),
                "access_denied" => Ok(DevicePoll::Denied),
                "expired_token" => Ok(DevicePoll::Expired),
                _ => Err(OidcError::Refused { error: refusal.error, description: refusal.error_description }),
            };
        }
        let tokens: Tokens =
            serde_json::from_slice(&body).map_err(|_| OidcError::Malformed("unreadable token response".into()))?;
        let id_token = tokens.id_token().ok_or(OidcError::MissingIdToken)?;
        // No nonce in the device flow: nothing was sent that could come back.
        let claims = id_token.claims(&self.provider.id_token_verifier(), any_nonce).map_err(invalid_id_token)?;
        let claims = serde_json::to_value(claims).map_err(|_| OidcError::InvalidIdToken("unreadable claims".into()))?;
        self.identity(&claims, tokens.refresh_token().map(|t| t.secret().clone())).map(DevicePoll::Done)
    }

    /// Reads the person's identity afresh with `refresh_token`: from the new ID token, or from the
    /// userinfo endpoint when the provider sends none.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Identity, OidcError> {
        let old = RefreshToken::new(refresh_token.to_owned());
        let tokens = self
            .provider
            .exchange_refresh_token(&old)
            .map_err(|_| OidcError::NoTokenEndpoint)?
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let next = tokens.refresh_token().unwrap_or(&old).secret().clone();
        let claims = match tokens.id_token() {
            // A refreshed ID token carries the original nonce or none (OIDC Core, section 12.2).
            Some(id_token) => {
                let claims =
                    id_token.claims(&self.provider.id_token_verifier(), any_nonce).map_err(invalid_id_token)?;
                serde_json::to_value(claims).map_err(|_| OidcError::InvalidIdToken("unreadable claims".into()))?
            }
            None => {
                let claims: openidconnect::UserInfoClaims<OtherClaims, CoreGenderClaim> = self
                    .provider
                    .user_info(tokens.access_token().clone(), None)
                    .map_err(|_| OidcError::NoUserInfo)?
                    .request_async(&self.http)
                    .await
                    .map_err(|e| OidcError::InvalidUserInfo(chain(&e)))?;
                serde_json::to_value(&claims).map_err(|_| OidcError::InvalidUserInfo("unreadable claims".into()))?
            }
        };
        self.identity(&claims, Some(next))
    }

    fn scopes(&self) -> Vec<Scope> {
        // `openid` is added by openidconnect itself.
        self.settings.scopes.iter().filter(|s| s.as_str() != "openid").map(|s| Scope::new(s.clone())).collect()
    }

    /// The identity in verified `claims` (a JSON object).
    fn identity(&self, claims: &Value, refresh_token: Option<String>) -> Result<Identity, OidcError> {
        let text = |name: &str| match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(OidcError::InvalidClaim { claim: name.to_owned(), expected: "a string" }),
        };
        let required = |name: &str| text(name)?.ok_or_else(|| OidcError::MissingClaim(name.to_owned()));
        let groups_claim = &self.settings.groups_claim;
        let not_groups = || OidcError::InvalidClaim { claim: groups_claim.clone(), expected: "an array of strings" };
        let groups = match claims.get(groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                items.iter().map(|g| g.as_str().map(str::to_owned).ok_or_else(not_groups)).collect::<Result<_, _>>()?
            }
            Some(_) => return Err(not_groups()),
        };
        Ok(Identity {
            subject: required("sub")?,
            username: required(&self.settings.username_claim)?,
            email: text("email")?,
            groups,
            refresh_token,
        })
    }
}

/// Accepts any nonce, for ID tokens that answer no request of ours carrying one.
fn any_nonce(_: Option<&Nonce>) -> Result<(), String> {
    Ok(())
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error and its sources, one after the other.
fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An OAuth error answer (RFC 6749, section 5.2).
#[derive(Deserialize)]
struct Refusal {
    error: String,
    error_description: Option<String>,
}

/// An error of the token or device authorization endpoint, without the response's body.
fn token_error<T>(error: RequestTokenError<reqwest::Error, StandardErrorResponse<T>>) -> OidcError
where
    T: openidconnect::ErrorResponseType + fmt::Display + 'static,
{
    match error {
        RequestTokenError::ServerResponse(refusal) => {
            OidcError::Refused { error: refusal.error().to_string(), description: refusal.error_description().cloned() }
        }
        RequestTokenError::Request(e) => OidcError::Unreachable(chain(&e)),
        RequestTokenError::Parse(e, _body) => OidcError::Malformed(format!("unreadable answer at `{}`", e.path())),
        RequestTokenError::Other(reason) => OidcError::Malformed(reason),
    }
}

fn invalid_id_token(error: openidconnect::ClaimsVerificationError) -> OidcError {
    OidcError::InvalidIdToken(chain(&error))
}
