//! The configuration file, `airlock.toml`. Relative paths in it are relative to the file.
//!
//! ```toml
//! [broker]
//! listen = "127.0.0.1:8470"   # --listen wins
//! pending_ttl = "1h"          # pending requests expire, unreviewed, after this
//! auditors = ["sre"]          # groups that may read and verify the audit chain
//!
//! [policy]
//! catalog = "catalog.toml"    # resources and roles
//! policies = "policies"       # a directory of *.cedar files
//! tests = "policy-tests"      # a directory of *.toml policy test cases
//!
//! [gateway]                   # present: `airlock serve` also runs the PostgreSQL gateway
//! listen = "127.0.0.1:6470"
//! tls_cert = "cert.pem"       # both or neither; neither: a self-signed pair in the data directory
//! tls_key = "key.pem"
//! require_tls = true          # refuse clients without TLS
//! idle_timeout = "15m"        # close sessions idle this long
//! redact_literals = false     # record statements with literals replaced by $n
//! startup_timeout = "10s"     # close a connection that has not logged in this long after connecting
//! max_pending_logins = 256    # connections logging in at once; more are refused at once
//! max_failed_logins = 10      # failed logins from one address (IPv6: /64) within the window
//! failed_logins_window = "1m" #   after which its logins are refused for a window (0: no limit)
//!
//! [breakglass]
//! review_within = "24h"       # a break-glass review still open this long is escalated
//! reject_bars_holder = true   # a rejected review stops the holder's future break-glass
//!
//! [incidents]
//! managers = ["incident-tools"]   # groups that may open and close incidents (people or a tool's account)
//!
//! [[incidents.playbook]]      # while an incident of severity <= max_severity is open…
//! name = "database-outage"
//! max_severity = 2            # 0 to 5, lower is more severe
//! groups = ["oncall"]         # …members of these groups…
//! responders = true           # …and the incident's named responders…
//! max = "2h"                  # …get these roles approved at once, each grant at most this long,
//! access = [{ resource = "demo-db", role = "write" }]   # all ending when the incident closes
//!
//! [identity]                # broker sessions begun by `airlock login` (docs/identity.md)
//! session_idle = "30m"        # a login unused this long ends
//! session_max = "12h"         # a login ends this long after it began, refreshed or not
//! access_ttl = "15m"          # one access token works this long; the refresh token renews it
//!
//! [identity.oidc]           # single sign-on: `airlock login`, and the browser flow (docs/sso.md)
//! issuer = "https://login.example.com/realms/eng"   # discovery: {issuer}/.well-known/openid-configuration
//! client_id = "airlock"
//! client_secret_env = "AIRLOCK_OIDC_SECRET"   # or client_secret_file = "oidc.secret"; never inline
//! redirect_url = "https://airlock.example.com/v1/login/oidc/callback"   # register it at the provider
//! groups_claim = "groups"                # the ID token claim with the person's groups
//! username_claim = "preferred_username"  # the claim with their Airlock user name
//! scopes = ["openid", "profile", "email", "groups", "offline_access"]   # leave out: these
//!
//! [mfa]                       # TOTP second factor (docs/identity.md)
//! issuer = "Airlock"          # what authenticator apps show
//! fresh_for = "15m"           # a code proved this recently counts as fresh (context.mfa)
//! breakglass = true           # every break-glass needs a fresh code
//! sensitive_approvals = true  # approving on a resource marked `sensitive` needs one too
//!
//! [audit]
//! checkpoint_every = "1s"     # sign the chain's head this often when it moved
//! checkpoint_every_records = 10000   # and whenever this many records were appended
//! checkpoint_file = "/mnt/other-volume/airlock-checkpoints.jsonl"  # copy each checkpoint here
//! checkpoint_webhook = "https://audit.example.com/airlock"          # and POST it here
//! redact_fields = ["password", "token"]      # values under these names become commitments
//! redact_patterns = ['\b\d{13,19}\b']        # and so does every match in a string
//!
//! [notify]                    # webhook notifications, sent by `airlock serve` (docs/notifications.md)
//! base_url = "https://airlock.example.com"   # links in messages point here (none: no links)
//!
//! [[notify.channel]]
//! name = "sre-slack"
//! format = "slack"            # a Slack-compatible incoming webhook; or "json"
//! url_env = "AIRLOCK_SLACK_WEBHOOK"      # or url = "https://…" (the URL is often itself a secret)
//! secret_env = "AIRLOCK_NOTIFY_SECRET"   # the HMAC key that signs each POST; or secret_file = "notify.key"
//!
//! [[notify.route]]
//! channel = "sre-slack"
//! events = ["review_needed", "breakglass_used"]   # leave out: every kind
//! resources = ["demo-db"]                          # leave out: any resource
//! environments = ["prod"]                          # leave out: any environment (from the catalog)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use airlock_core::audit::redaction::{RedactionError, RedactionRules};
use airlock_core::catalog::SecretSource;
use airlock_core::ids::{GroupName, ResourceName};
use airlock_core::incident::Playbook;
use airlock_core::values::GrantDuration;
use serde::Deserialize;

use crate::notify::{Format, NoticeKind};

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config `{path}`: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config `{path}`: {source}")]
    Syntax { path: String, source: toml::de::Error },
    #[error("config `{path}`: {message}")]
    Invalid { path: String, message: &'static str },
    #[error("config `{path}`: [audit] {source}")]
    Redaction { path: String, source: RedactionError },
    #[error("config `{path}`: [notify] {message}")]
    Notify { path: String, message: String },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub broker: BrokerSection,
    #[serde(default)]
    pub policy: PolicySection,
    pub gateway: Option<GatewaySection>,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub breakglass: BreakGlassSection,
    #[serde(default)]
    pub incidents: IncidentsSection,
    #[serde(default)]
    pub notify: NotifySection,
    #[serde(default)]
    pub identity: IdentitySection,
    #[serde(default)]
    pub mfa: MfaSection,
}

/// Who runs incidents, and the playbooks that arm their responders.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsSection {
    /// Members of these groups may open and close incidents.
    #[serde(default)]
    pub managers: Vec<GroupName>,
    /// Checked against the catalog when the broker opens (`airlock_core::incident::check_playbooks`).
    #[serde(default, rename = "playbook")]
    pub playbooks: Vec<Playbook>,
}

/// Webhook notifications: the channels they go to and which notices go where.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// Links in messages point here (no trailing slash); none: messages carry no links.
    #[serde(default, deserialize_with = "base_url")]
    pub base_url: Option<String>,
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelSection>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
}

/// One webhook that receives notices.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ChannelEntry")]
pub struct ChannelSection {
    /// Names the channel in routes, logs, metrics and audit records (never its URL).
    pub name: String,
    pub format: Format,
    pub url: UrlSource,
    /// The key that signs every POST; never written inline.
    pub secret: SecretSource,
}

/// Where a channel's URL comes from. An incoming-webhook URL is often a credential, so `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlSource {
    Inline(String),
    /// The name of the environment variable that holds it.
    Env(String),
}

impl std::fmt::Debug for UrlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            UrlSource::Env(var) => f.debug_tuple("Env").field(var).finish(),
        }
    }
}

/// A channel as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelEntry {
    name: String,
    format: Format,
    url: Option<String>,
    url_env: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
}

impl TryFrom<ChannelEntry> for ChannelSection {
    type Error = String;

    fn try_from(entry: ChannelEntry) -> Result<Self, String> {
        let name = entry.name;
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!("[notify] channel name `{name}` must be 1 to 64 letters, digits, `-`, `_` or `.`"));
        }
        let url = match (entry.url, entry.url_env) {
            // The URL itself is never repeated in an error: it may be a credential.
            (Some(url), None) if is_http_url(&url) => UrlSource::Inline(url),
            (Some(_), None) => {
                return Err(format!("[notify] channel `{name}`: url must be an http:// or https:// URL"));
            }
            (None, Some(var)) if !var.is_empty() => UrlSource::Env(var),
            (None, Some(_)) => return Err(format!("[notify] channel `{name}`: url_env must name a variable")),
            (Some(_), Some(_)) => return Err(format!("[notify] channel `{name}`: give url or url_env, not both")),
            (None, None) => return Err(format!("[notify] channel `{name}`: needs url or url_env")),
        };
        let secret = match (entry.secret_env, entry.secret_file) {
            (Some(var), None) if !var.is_empty() => SecretSource::Env(var),
            (None, Some(path)) if !path.as_os_str().is_empty() => SecretSource::File(path),
            (Some(_), Some(_)) => {
                return Err(format!("[notify] channel `{name}`: give secret_env or secret_file, not both"));
            }
            _ => {
                return Err(format!(
                    "[notify] channel `{name}`: needs secret_env or secret_file (the key that signs each delivery)"
                ));
            }
        };
        Ok(Self { name, format: entry.format, url, secret })
    }
}

/// Which notices go to a channel. Each list left out matches anything; a notice without a
/// resource (an incident) matches only routes that name no resources and no environments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub channel: String,
    pub events: Option<Vec<NoticeKind>>,
    pub resources: Option<Vec<ResourceName>>,
    /// Environments as the catalog names them.
    pub environments: Option<Vec<String>>,
}

/// Whether `text` is an absolute `http://` or `https://` URL with a host.
pub(crate) fn is_http_url(text: &str) -> bool {
    reqwest::Url::parse(text)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|h| !h.is_empty()))
}

fn base_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if !is_http_url(&text) {
        return Err(serde::de::Error::custom("base_url must be an http:// or https:// URL"));
    }
    Ok(Some(text.trim_end_matches('/').to_owned()))
}

impl NotifySection {
    /// What the file's shape cannot say: unique channel names, routes that name a channel, lists
    /// that are not empty, every channel routed.
    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for channel in &self.channels {
            if !names.insert(channel.name.as_str()) {
                return Err(format!("channel `{}` is defined twice", channel.name));
            }
        }
        for route in &self.routes {
            let channel = &route.channel;
            if !names.contains(channel.as_str()) {
                return Err(format!("a route names channel `{channel}`, which is not defined"));
            }
            let empty = [
                ("events", route.events.as_ref().is_some_and(Vec::is_empty)),
                ("resources", route.resources.as_ref().is_some_and(Vec::is_empty)),
                ("environments", route.environments.as_ref().is_some_and(Vec::is_empty)),
            ];
            if let Some((field, _)) = empty.iter().find(|(_, empty)| *empty) {
                return Err(format!(
                    "the route to `{channel}` has `{field} = []`, which matches nothing; leave it out to match any"
                ));
            }
        }
        if let Some(unused) = self.channels.iter().find(|c| self.routes.iter().all(|r| r.channel != c.name)) {
            return Err(format!("channel `{}` is named by no route, so it would never hear anything", unused.name));
        }
        Ok(())
    }
}

/// Broker sessions: how long a login lasts, and how long it may sit unused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// A login unused this long ends (checked to the half minute).
    #[serde(default = "default_session_idle")]
    pub session_idle: GrantDuration,
    /// A login ends this long after it began, however often it was refreshed.
    #[serde(default = "default_session_max")]
    pub session_max: GrantDuration,
    /// How long one access token of a login works before the client must refresh it.
    #[serde(default = "default_access_ttl")]
    pub access_ttl: GrantDuration,
    /// Single sign-on through an OpenID Connect provider; none: logins cannot begin.
    pub oidc: Option<OidcSection>,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self {
            session_idle: default_session_idle(),
            session_max: default_session_max(),
            access_ttl: default_access_ttl(),
            oidc: None,
        }
    }
}

/// The OpenID Connect provider people sign in with (`[identity.oidc]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "OidcEntry")]
pub struct OidcSection {
    /// `https://`, or `http://` on a loopback address (a provider for tests).
    pub issuer: reqwest::Url,
    pub client_id: String,
    /// Never written inline.
    pub client_secret: SecretSource,
    pub groups_claim: String,
    pub username_claim: String,
    /// `None`: the default scopes of [`crate::oidc::OidcSettings::new`].
    pub scopes: Option<Vec<String>>,
    /// The broker's public callback URL, ending in `/v1/login/oidc/callback`, registered at the
    /// provider exactly.
    pub redirect_url: reqwest::Url,
}

/// `[identity.oidc]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcEntry {
    issuer: String,
    client_id: String,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default = "default_username_claim")]
    username_claim: String,
    scopes: Option<Vec<String>>,
    redirect_url: String,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_username_claim() -> String {
    "preferred_username".to_owned()
}

/// The path of the broker's callback, which `redirect_url` must end with.
pub const OIDC_CALLBACK_PATH: &str = "/v1/login/oidc/callback";

/// Parses an `https://` URL, or an `http://` one whose host is a loopback address.
fn secure_url(field: &str, text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("[identity.oidc] {field} `{text}` is not a URL: {e}"))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!(
            "[identity.oidc] {field} `{text}` must be an https:// URL (http:// only on a loopback address)"
        )),
    }
}

impl TryFrom<OidcEntry> for OidcSection {
    type Error = String;

    fn try_from(entry: OidcEntry) -> Result<Self, String> {
        let issuer = secure_url("issuer", &entry.issuer)?;
        let redirect_url = secure_url("redirect_url", &entry.redirect_url)?;
        if !redirect_url.path().ends_with(OIDC_CALLBACK_PATH) || redirect_url.query().is_some() {
            return Err(format!(
                "[identity.oidc] redirect_url `{redirect_url}` must be the broker's public URL ending in `{OIDC_CALLBACK_PATH}`"
            ));
        }
        if entry.client_id.is_empty() {
            return Err("[identity.oidc] client_id must not be empty".to_owned());
        }
        let client_secret = match (entry.client_secret_env, entry.client_secret_file) {
            (Some(var), None) if !var.is_empty() => SecretSource::Env(var),
            (None, Some(path)) if !path.as_os_str().is_empty() => SecretSource::File(path),
            (Some(_), Some(_)) => {
                return Err("[identity.oidc] give client_secret_env or client_secret_file, not both".to_owned());
            }
            _ => return Err("[identity.oidc] needs client_secret_env or client_secret_file".to_owned()),
        };
        for (field, claim) in [("groups_claim", &entry.groups_claim), ("username_claim", &entry.username_claim)] {
            if claim.is_empty() {
                return Err(format!("[identity.oidc] {field} must name a claim"));
            }
        }
        if let Some(scopes) = &entry.scopes
            && scopes.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err("[identity.oidc] each of scopes must be one word".to_owned());
        }
        Ok(Self {
            issuer,
            client_id: entry.client_id,
            client_secret,
            groups_claim: entry.groups_claim,
            username_claim: entry.username_claim,
            scopes: entry.scopes,
            redirect_url,
        })
    }
}

fn default_session_idle() -> GrantDuration {
    GrantDuration::from_secs(30 * 60).expect("30 minutes is a valid duration")
}

fn default_session_max() -> GrantDuration {
    GrantDuration::from_secs(12 * 3600).expect("12 hours is a valid duration")
}

fn default_access_ttl() -> GrantDuration {
    GrantDuration::from_secs(15 * 60).expect("15 minutes is a valid duration")
}

/// The second factor: TOTP, and when it must be fresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaSection {
    /// The name authenticator apps show beside the account.
    #[serde(default = "default_mfa_issuer")]
    pub issuer: String,
    /// A second factor proved this recently is fresh (`context.mfa` in policies).
    #[serde(default = "default_mfa_fresh_for")]
    pub fresh_for: GrantDuration,
    /// Every break-glass needs a fresh second factor.
    #[serde(default = "yes")]
    pub breakglass: bool,
    /// Approving a role of a resource marked `sensitive` needs a fresh second factor.
    #[serde(default = "yes")]
    pub sensitive_approvals: bool,
}

impl Default for MfaSection {
    fn default() -> Self {
        Self {
            issuer: default_mfa_issuer(),
            fresh_for: default_mfa_fresh_for(),
            breakglass: true,
            sensitive_approvals: true,
        }
    }
}

fn default_mfa_issuer() -> String {
    "Airlock".to_owned()
}

fn default_mfa_fresh_for() -> GrantDuration {
    GrantDuration::from_secs(15 * 60).expect("15 minutes is a valid duration")
}

/// What follows an emergency grant: its mandatory review.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassSection {
    /// A review still open this long after the grant started is escalated and reported.
    #[serde(default = "default_review_within")]
    pub review_within: GrantDuration,
    /// A rejected review bars the holder from break-glass until an administrator lifts the bar.
    #[serde(default = "yes")]
    pub reject_bars_holder: bool,
}

impl Default for BreakGlassSection {
    fn default() -> Self {
        Self { review_within: default_review_within(), reject_bars_holder: true }
    }
}

fn default_review_within() -> GrantDuration {
    GrantDuration::from_secs(24 * 3600).expect("24 hours is a valid duration")
}

/// Signed checkpoints of the audit chain, and where copies of them go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: GrantDuration,
    #[serde(default = "default_checkpoint_every_records")]
    pub checkpoint_every_records: u32,
    pub checkpoint_file: Option<PathBuf>,
    pub checkpoint_webhook: Option<String>,
    /// Field names whose values are redacted from audit details, at any depth.
    #[serde(default)]
    pub redact_fields: Vec<String>,
    /// Regular expressions whose matches are redacted from audit details' strings.
    #[serde(default)]
    pub redact_patterns: Vec<String>,
}

impl AuditSection {
    pub fn redaction(&self) -> Result<RedactionRules, RedactionError> {
        RedactionRules::new(&self.redact_fields, &self.redact_patterns)
    }
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            checkpoint_every: default_checkpoint_every(),
            checkpoint_every_records: default_checkpoint_every_records(),
            checkpoint_file: None,
            checkpoint_webhook: None,
            redact_fields: Vec::new(),
            redact_patterns: Vec::new(),
        }
    }
}

fn default_checkpoint_every() -> GrantDuration {
    GrantDuration::from_secs(1).expect("one second is a valid duration")
}

fn default_checkpoint_every_records() -> u32 {
    10_000
}

/// The PostgreSQL gateway's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    #[serde(default = "default_gateway_listen")]
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default = "yes")]
    pub require_tls: bool,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: GrantDuration,
    #[serde(default)]
    pub redact_literals: bool,
    /// A connection whose credential has not verified this long after it was accepted is closed.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout: GrantDuration,
    /// Connections logging in at once, at most (at least 1).
    #[serde(default = "default_max_pending_logins")]
    pub max_pending_logins: usize,
    /// Failed logins from one source within `failed_logins_window` after which the source is
    /// refused for a window; 0: no limit.
    #[serde(default = "default_max_failed_logins")]
    pub max_failed_logins: u32,
    #[serde(default = "default_failed_logins_window")]
    pub failed_logins_window: GrantDuration,
    /// The longest statement text the gateway reads, in bytes; longer texts are refused before
    /// they are parsed.
    #[serde(default = "default_max_statement_bytes")]
    pub max_statement_bytes: usize,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: default_gateway_listen(),
            tls_cert: None,
            tls_key: None,
            require_tls: true,
            idle_timeout: default_idle_timeout(),
            redact_literals: false,
            startup_timeout: default_startup_timeout(),
            max_pending_logins: default_max_pending_logins(),
            max_failed_logins: default_max_failed_logins(),
            failed_logins_window: default_failed_logins_window(),
            max_statement_bytes: default_max_statement_bytes(),
        }
    }
}

fn default_max_statement_bytes() -> usize {
    1 << 20
}

fn default_gateway_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6470))
}

fn default_idle_timeout() -> GrantDuration {
    GrantDuration::from_secs(15 * 60).expect("15 minutes is a valid duration")
}

fn default_startup_timeout() -> GrantDuration {
    GrantDuration::from_secs(10).expect("10 seconds is a valid duration")
}

fn default_max_pending_logins() -> usize {
    256
}

fn default_max_failed_logins() -> u32 {
    10
}

fn default_failed_logins_window() -> GrantDuration {
    GrantDuration::from_secs(60).expect("one minute is a valid duration")
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    pub listen: Option<SocketAddr>,
    #[serde(default = "default_pending_ttl")]
    pub pending_ttl: GrantDuration,
    #[serde(default)]
    pub auditors: Vec<GroupName>,
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self { listen: None, pending_ttl: default_pending_ttl(), auditors: Vec::new() }
    }
}

fn default_pending_ttl() -> GrantDuration {
    GrantDuration::from_secs(3600).expect("one hour is a valid duration")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    #[serde(default = "default_catalog")]
    pub catalog: PathBuf,
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    #[serde(default = "default_tests")]
    pub tests: PathBuf,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self { catalog: default_catalog(), policies: default_policies(), tests: default_tests() }
    }
}

fn default_catalog() -> PathBuf {
    "catalog.toml".into()
}

fn default_policies() -> PathBuf {
    "policies".into()
}

fn default_tests() -> PathBuf {
    "policy-tests".into()
}

impl Config {
    /// Reads `path`, resolving the policy paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: display.clone(), source })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Syntax { path: display, source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for file in [&mut config.policy.catalog, &mut config.policy.policies, &mut config.policy.tests] {
            *file = base.join(&*file);
        }
        if let Some(gateway) = &mut config.gateway {
            for file in [&mut gateway.tls_cert, &mut gateway.tls_key].into_iter().flatten() {
                *file = base.join(&*file);
            }
            if gateway.tls_cert.is_some() != gateway.tls_key.is_some() {
                let message = "[gateway] needs both tls_cert and tls_key, or neither";
                return Err(ConfigError::Invalid { path: path.display().to_string(), message });
            }
            if gateway.max_pending_logins == 0 {
                let message = "[gateway] max_pending_logins must be at least 1";
                return Err(ConfigError::Invalid { path: path.display().to_string(), message });
            }
        }
        if let Some(file) = &mut config.audit.checkpoint_file {
            *file = base.join(&*file);
        }
        let invalid = |message| ConfigError::Invalid { path: path.display().to_string(), message };
        if let Err(source) = config.audit.redaction() {
            return Err(ConfigError::Redaction { path: path.display().to_string(), source });
        }
        if config.audit.checkpoint_every_records == 0 {
            return Err(invalid("[audit] checkpoint_every_records must be at least 1"));
        }
        if let Some(url) = &config.audit.checkpoint_webhook
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(invalid("[audit] checkpoint_webhook must be an http:// or https:// URL"));
        }
        config.notify.check().map_err(|message| ConfigError::Notify { path: path.display().to_string(), message })?;
        for channel in &mut config.notify.channels {
            if let SecretSource::File(file) = &mut channel.secret {
                *file = base.join(&*file);
            }
        }
        if let Some(SecretSource::File(file)) = config.identity.oidc.as_mut().map(|oidc| &mut oidc.client_secret) {
            *file = base.join(&*file);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.toml");
        std::fs::write(&path, "[broker]\npending_ttl = \"15m\"\nauditors = [\"sre\"]\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.broker.pending_ttl.as_secs(), 900);
        assert_eq!(config.policy.catalog, dir.path().join("catalog.toml"));
        std::fs::write(&path, "[broker]\nlisten = \"nowhere\"\n").unwrap();
        assert!(Config::load(&path).unwrap_err().to_string().contains("invalid socket address"));
        std::fs::write(&path, "[gateway]\nidle_timeout = \"5m\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").unwrap();
        let gateway = Config::load(&path).unwrap().gateway.unwrap();
        assert_eq!((gateway.listen.port(), gateway.idle_timeout.as_secs()), (6470, 300));
        assert_eq!(gateway.tls_cert, Some(dir.path().join("c.pem")));
        let door = (gateway.startup_timeout.as_secs(), gateway.max_pending_logins, gateway.max_failed_logins);
        assert_eq!((door, gateway.failed_logins_window.as_secs()), ((10, 256, 10), 60), "the front door's defaults");
        std::fs::write(&path, "[gateway]\nstartup_timeout = \"3s\"\nmax_pending_logins = 8\nmax_failed_logins = 0\n")
            .unwrap();
        let gateway = Config::load(&path).unwrap().gateway.unwrap();
        assert_eq!(
            (gateway.startup_timeout.as_secs(), gateway.max_pending_logins, gateway.max_failed_logins),
            (3, 8, 0)
        );
        std::fs::write(&path, "[gateway]\nmax_pending_logins = 0\n").unwrap();
        assert!(Config::load(&path).unwrap_err().to_string().contains("max_pending_logins must be at least 1"));
        std::fs::write(&path, "[gateway]\ntls_cert = \"c.pem\"\n").unwrap();
        assert!(Config::load(&path).unwrap_err().to_string().contains("both tls_cert and tls_key"));
        std::fs::write(&path, "[audit]\ncheckpoint_file = \"sink.jsonl\"\ncheckpoint_every_records = 5\n").unwrap();
        let audit = Config::load(&path).unwrap().audit;
        assert_eq!((audit.checkpoint_file, audit.checkpoint_every_records), (Some(dir.path().join("sink.jsonl")), 5));
        assert_eq!(audit.checkpoint_every.as_secs(), 1);
        std::fs::write(&path, "[audit]\ncheckpoint_webhook = \"ftp://x\"\n").unwrap();
        assert!(Config::load(&path).unwrap_err().to_string().contains("http:// or https://"));
        std::fs::write(&path, "[audit]\nredact_patterns = [\"(\"]\n").unwrap();
        assert!(Config::load(&path).unwrap_err().to_string().contains("is not a valid regular expression"));
        std::fs::write(&path, "[brokr]\n").unwrap();
        assert!(Config::load(&path).unwrap_err().to_string().contains("unknown field `brokr`"));
    }

    const CHANNEL: &str = "[[notify.channel]]\nname = \"sre\"\nformat = \"json\"\n";
    const ROUTE: &str = "[[notify.route]]\nchannel = \"sre\"\n";

    /// Loads `text` as a config file and returns its error, which must name `expected`.
    #[track_caller]
    fn refused(text: &str, expected: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.toml");
        std::fs::write(&path, text).unwrap();
        let error = Config::load(&path).expect_err(text).to_string();
        assert!(error.contains(expected), "{error:?} does not say {expected:?}");
        assert!(!error.contains("s3cr3t"), "{error:?} shows the URL");
    }

    #[test]
    fn notify_channels_and_routes_load_with_secret_files_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.toml");
        let text = format!(
            "[notify]\nbase_url = \"https://airlock.example.com/\"\n{CHANNEL}url = \"https://hooks.example.com/s3cr3t\"\n\
             secret_file = \"notify.key\"\n{ROUTE}events = [\"review_needed\", \"grant_ending\"]\n\
             environments = [\"prod\"]\n[[notify.route]]\nchannel = \"sre\"\nresources = [\"demo-db\"]\n"
        );
        std::fs::write(&path, text).unwrap();
        let notify = Config::load(&path).unwrap().notify;
        assert_eq!(notify.base_url.as_deref(), Some("https://airlock.example.com"));
        let channel = &notify.channels[0];
        assert_eq!((channel.name.as_str(), channel.format), ("sre", Format::Json));
        assert_eq!(channel.url, UrlSource::Inline("https://hooks.example.com/s3cr3t".into()));
        assert_eq!(channel.secret, SecretSource::File(dir.path().join("notify.key")));
        assert!(!format!("{notify:?}").contains("s3cr3t"), "Debug never shows an inline URL");
        assert_eq!(notify.routes[0].events, Some(vec![NoticeKind::ReviewNeeded, NoticeKind::GrantEnding]));
        assert_eq!((notify.routes[1].events.as_ref(), notify.routes[1].environments.as_ref()), (None, None));
        std::fs::write(&path, "").unwrap();
        assert!(Config::load(&path).unwrap().notify.channels.is_empty(), "no [notify]: no notifications");
    }

    #[test]
    fn bad_notify_sections_are_refused_naming_what_is_wrong() {
        let secret = "secret_env = \"KEY\"\n";
        let url = "url = \"https://hooks.example.com/s3cr3t\"\n";
        let env_url = "url_env = \"HOOK\"\n";
        refused(&format!("{CHANNEL}{secret}{ROUTE}"), "channel `sre`: needs url or url_env");
        refused(&format!("{CHANNEL}{url}{env_url}{secret}{ROUTE}"), "channel `sre`: give url or url_env, not both");
        refused(&format!("{CHANNEL}url = \"ftp://s3cr3t\"\n{secret}{ROUTE}"), "url must be an http:// or https:// URL");
        refused(&format!("{CHANNEL}{url}{ROUTE}"), "channel `sre`: needs secret_env or secret_file");
        refused(
            &format!("{CHANNEL}{url}{secret}secret_file = \"k\"\n{ROUTE}"),
            "give secret_env or secret_file, not both",
        );
        refused(&format!("{CHANNEL}{url}secret = \"inline\"\n{ROUTE}"), "unknown field `secret`");
        refused(&format!("{CHANNEL}{env_url}{secret}format2 = 1\n{ROUTE}"), "unknown field `format2`");
        refused(
            &format!("[[notify.channel]]\nname = \"sre\"\nformat = \"teams\"\n{env_url}{secret}{ROUTE}"),
            "unknown variant `teams`",
        );
        refused(
            &format!("[[notify.channel]]\nname = \"s re\"\nformat = \"json\"\n{env_url}{secret}"),
            "`s re` must be",
        );
        refused(
            &format!("{CHANNEL}{env_url}{secret}{CHANNEL}{env_url}{secret}{ROUTE}"),
            "channel `sre` is defined twice",
        );
        refused(
            &format!("{CHANNEL}{env_url}{secret}{ROUTE}[[notify.route]]\nchannel = \"ops\"\n"),
            "names channel `ops`",
        );
        refused(&format!("{CHANNEL}{env_url}{secret}"), "channel `sre` is named by no route");
        refused(
            &format!("{CHANNEL}{env_url}{secret}{ROUTE}events = [\"grant_expired\"]\n"),
            "unknown variant `grant_expired`",
        );
        refused(
            &format!("{CHANNEL}{env_url}{secret}{ROUTE}resources = []\n"),
            "`resources = []`, which matches nothing",
        );
        refused(&format!("{CHANNEL}{env_url}{secret}{ROUTE}resources = [\"Bad Name\"]\n"), "Bad Name");
        refused("[notify]\nbase_url = \"airlock.example.com\"\n", "base_url must be an http:// or https:// URL");
    }

    const OIDC: &str = "[identity.oidc]\nissuer = \"https://login.example.com/realms/eng\"\nclient_id = \"airlock\"\n\
                        redirect_url = \"https://airlock.example.com/v1/login/oidc/callback\"\n";

    #[test]
    fn identity_oidc_loads_with_defaults_and_a_secret_file_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.toml");
        std::fs::write(&path, format!("{OIDC}client_secret_file = \"oidc.secret\"\n")).unwrap();
        let oidc = Config::load(&path).unwrap().identity.oidc.unwrap();
        assert_eq!(oidc.issuer.as_str(), "https://login.example.com/realms/eng");
        assert_eq!(oidc.client_secret, SecretSource::File(dir.path().join("oidc.secret")));
        assert_eq!((oidc.groups_claim.as_str(), oidc.username_claim.as_str()), ("groups", "preferred_username"));
        assert_eq!(oidc.scopes, None);
        std::fs::write(
            &path,
            "[identity.oidc]\nissuer = \"http://127.0.0.1:5556\"\nclient_id = \"airlock\"\nclient_secret_env = \"S\"\n\
             redirect_url = \"http://127.0.0.1:8470/v1/login/oidc/callback\"\ngroups_claim = \"roles\"\n\
             scopes = [\"openid\", \"groups\"]\n",
        )
        .unwrap();
        let oidc = Config::load(&path).unwrap().identity.oidc.unwrap();
        assert_eq!((oidc.client_secret, oidc.groups_claim.as_str()), (SecretSource::Env("S".into()), "roles"));
        assert_eq!(oidc.scopes, Some(vec!["openid".to_owned(), "groups".to_owned()]));
        std::fs::write(&path, "[identity]\nsession_idle = \"10m\"\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().identity.oidc, None, "no [identity.oidc]: no single sign-on");
    }

    #[test]
    fn bad_identity_oidc_sections_are_refused_naming_what_is_wrong() {
        let env = "client_secret_env = \"S\"\n";
        refused(OIDC, "needs client_secret_env or client_secret_file");
        refused(&format!("{OIDC}{env}client_secret_file = \"f\"\n"), "not both");
        refused(&format!("{OIDC}client_secret = \"inline\"\n"), "unknown field `client_secret`");
        refused(
            &(OIDC.replace("https://login.example.com", "http://login.example.com") + env),
            "issuer `http://login.example.com/realms/eng` must be an https:// URL",
        );
        refused(
            &(OIDC.replace("/v1/login/oidc/callback", "/callback") + env),
            "must be the broker's public URL ending in `/v1/login/oidc/callback`",
        );
        refused(&format!("{OIDC}{env}groups_claim = \"\"\n"), "groups_claim must name a claim");
        refused(&format!("{OIDC}{env}scopes = [\"openid profile\"]\n"), "each of scopes must be one word");
    }
}
