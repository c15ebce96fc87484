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
//!
//! [breakglass]
//! review_within = "24h"       # a break-glass review still open this long is escalated
//! reject_bars_holder = true   # a rejected review stops the holder's future break-glass
//!
//! [audit]
//! checkpoint_every = "1s"     # sign the chain's head this often when it moved
//! checkpoint_every_records = 10000   # and whenever this many records were appended
//! checkpoint_file = "/mnt/other-volume/airlock-checkpoints.jsonl"  # copy each checkpoint here
//! checkpoint_webhook = "https://audit.example.com/airlock"          # and POST it here
//! redact_fields = ["password", "token"]      # values under these names become commitments
//! redact_patterns = ['\b\d{13,19}\b']        # and so does every match in a string
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use airlock_core::audit::redaction::{RedactionError, RedactionRules};
use airlock_core::ids::GroupName;
use airlock_core::values::GrantDuration;
use serde::Deserialize;

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
        }
    }
}

fn default_gateway_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6470))
}

fn default_idle_timeout() -> GrantDuration {
    GrantDuration::from_secs(15 * 60).expect("15 minutes is a valid duration")
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
}
