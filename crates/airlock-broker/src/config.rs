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
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        std::fs::write(&path, "[brokr]\n").unwrap();
        assert!(Config::load(&path).unwrap_err().to_string().contains("unknown field `brokr`"));
    }
}
