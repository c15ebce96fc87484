//! The catalog: which resources exist, which roles each offers, how long a role may be held and
//! how many distinct approvals it needs. Policies decide *whether*; the catalog decides *what*.
//!
//! A `postgres` resource may also say where its database is (`[resource.postgres]`) and which
//! existing database roles each Airlock role maps to (`database_roles`): a grant's login role is
//! made a member of exactly those. Secrets are never inline: the connector's password is named
//! by an environment variable or a file. How Airlock's connections to that database are protected
//! is its `tls` setting ([`TlsMode`]): certificates verified unless the catalog says otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ids::{NameError, ResourceName, RoleName};
use crate::values::{DurationError, GrantDuration};

/// Why a catalog was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog is not valid TOML: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("resource `{0}` is defined twice")]
    DuplicateResource(String),
    #[error("resource `{resource}` has no roles")]
    NoRoles { resource: String },
    #[error("resource `{resource}`, role `{role}`: {source}")]
    RoleName { resource: String, role: String, source: NameError },
    #[error("resource `{resource}`, role `{role}`: {field}: {source}")]
    Duration { resource: String, role: String, field: &'static str, source: DurationError },
    #[error("resource `{resource}`, role `{role}`: approvals must be between 1 and 10, not {approvals}")]
    Approvals { resource: String, role: String, approvals: u32 },
    #[error("resource `{resource}`: a [resource.postgres] section needs kind = \"postgres\", not `{kind}`")]
    PostgresKind { resource: String, kind: String },
    #[error("resource `{resource}`: {message}")]
    Postgres { resource: String, message: String },
    #[error("resource `{resource}`: audit `{value}` is not one of `before` or `after`")]
    Audit { resource: String, value: String },
    #[error("resource `{resource}`, role `{role}`: database role `{database_role}`: {message}")]
    DatabaseRole { resource: String, role: String, database_role: String, message: String },
}

/// Where a secret comes from; its value is never written in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// How the connector's and the gateway's connections to a database are protected (`tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext: passwords and data cross the network readable. Never the default with an
    /// address; the throwaway cluster on loopback (no address) always uses it.
    Disable,
    /// Encrypted, but any certificate is accepted: protects only against passive eavesdropping,
    /// not against someone who can intercept the connection and present their own certificate.
    Require,
    /// Encrypted, and the server's certificate must chain to `ca_file` (PEM; the system's root
    /// certificates when absent) and name the address's host. The default with an address.
    VerifyFull { ca_file: Option<PathBuf> },
}

/// Where a `postgres` resource's database is, and how the connector logs in to manage roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    /// `host:port`; none means a throwaway local cluster that `airlock serve` starts.
    pub address: Option<String>,
    pub database: String,
    /// The connector's login: needs CREATEROLE and membership (with ADMIN OPTION) in the
    /// database roles it hands out. None only without an address.
    pub admin: Option<(String, SecretSource)>,
    /// Always [`TlsMode::Disable`] without an address.
    pub tls: TlsMode,
    /// The connector may log in as a superuser (`allow_superuser_connector = true`): a known risk,
    /// refused by default. A superuser connector gives every grant role's leftovers, and every
    /// mistake of the connector, the whole cluster.
    pub allow_superuser_connector: bool,
    /// Roles the standing report accepts with `SUPERUSER`, `CREATEROLE` or `BYPASSRLS` (beyond the
    /// cluster's bootstrap superuser and the connector's own login).
    pub privileged_roles: Vec<String>,
    /// How the gateway logs in as a grant's role (`grant_login`): always [`GrantLogin::Certificate`]
    /// for a throwaway cluster.
    pub grant_login: GrantLogin,
}

/// How the gateway proves a login as a grant's role to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantLogin {
    /// The role's password, derived from the connector's key. The role can change its own
    /// password, so this holds only as far as `pg_hba.conf` keeps the role's holder away.
    Password,
    /// A TLS client certificate for the role from Airlock's grant CA, which `pg_hba.conf`
    /// demands of grant roles (docs/postgres.md): no role can change it. Needs TLS.
    Certificate,
}

/// The default ceiling of a role that names none.
pub const DEFAULT_MAX_DURATION_SECONDS: u64 = 8 * 3600;
/// The default ceiling of a break-glass grant of a role that names none.
pub const DEFAULT_BREAK_GLASS_MAX_SECONDS: u64 = 3600;

/// One role on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: RoleName,
    pub max_duration: GrantDuration,
    pub approvals: u32,
    /// The longest a break-glass grant of this role lasts (a longer ask is cut to this).
    pub break_glass_max: GrantDuration,
    /// For `postgres` resources: the database roles a grant's login role is made a member of.
    pub database_roles: Vec<String>,
    /// For `postgres` resources: classes of statements the gateway lets this role send that it
    /// refuses by default (e.g. `role_change`); checked by the gateway at start.
    pub allow_statements: Vec<String>,
    /// For `postgres` resources: tables a grant of this role creates outlive it, owned by the
    /// powerless holding role; everything else the grant role owned is dropped with it.
    pub keep_tables: bool,
}

/// One resource of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: ResourceName,
    pub kind: String,
    pub environment: String,
    pub tags: Vec<String>,
    pub sensitive: bool,
    /// Gateway credentials for this resource only work from the address that asked for them.
    pub bind_credentials_to_source: bool,
    /// Gateway credentials for this resource are issued only to a trusted device, and only work
    /// on connections that prove its key (a TLS client certificate).
    pub bind_credentials_to_device: bool,
    /// When the gateway records a statement: before sending it (the default), or only once it
    /// completed (`audit = "after"`: faster, and a crash can lose the records of the statements
    /// of its last moments).
    pub audit: AuditTiming,
    pub roles: BTreeMap<RoleName, Role>,
    pub postgres: Option<PostgresTarget>,
}

/// When the gateway records a statement (`audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditTiming {
    /// `statement.started` is committed before the statement is sent: a crash can lose an
    /// answer, never the record of a statement that ran.
    #[default]
    Before,
    /// Only `statement.executed`, once the statement completed, gathered with others for up to
    /// 10 ms before it is committed.
    After,
}

/// All resources, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    resources: BTreeMap<ResourceName, Resource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    resource: Vec<ResourceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceEntry {
    name: ResourceName,
    kind: String,
    environment: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    sensitive: bool,
    #[serde(default)]
    bind_credentials_to_source: bool,
    #[serde(default)]
    bind_credentials_to_device: bool,
    audit: Option<String>,
    #[serde(default)]
    roles: BTreeMap<String, RoleEntry>,
    postgres: Option<PostgresEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresEntry {
    address: Option<String>,
    database: String,
    admin_user: Option<String>,
    admin_password_env: Option<String>,
    admin_password_file: Option<PathBuf>,
    tls: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow_superuser_connector: bool,
    #[serde(default)]
    privileged_roles: Vec<String>,
    grant_login: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    max_duration: Option<String>,
    break_glass_max: Option<String>,
    #[serde(default = "one")]
    approvals: u32,
    #[serde(default)]
    database_roles: Vec<String>,
    #[serde(default)]
    allow_statements: Vec<String>,
    #[serde(default)]
    keep_tables: bool,
}

fn one() -> u32 {
    1
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let file: CatalogFile = toml::from_str(text)?;
        let mut resources = BTreeMap::new();
        for entry in file.resource {
            let resource = entry.into_resource()?;
            if resources.contains_key(&resource.name) {
                return Err(CatalogError::DuplicateResource(resource.name.to_string()));
            }
            resources.insert(resource.name.clone(), resource);
        }
        Ok(Self { resources })
    }

    pub fn resource(&self, name: &ResourceName) -> Option<&Resource> {
        self.resources.get(name)
    }

    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values()
    }

    /// Makes relative file paths (secrets, CA certificates) relative to `dir` (the catalog
    /// file's directory).
    pub fn rebase_files(&mut self, dir: &Path) {
        for target in self.resources.values_mut().filter_map(|resource| resource.postgres.as_mut()) {
            let secret = match &mut target.admin {
                Some((_, SecretSource::File(path))) => Some(path),
                _ => None,
            };
            let ca_file = match &mut target.tls {
                TlsMode::VerifyFull { ca_file } => ca_file.as_mut(),
                _ => None,
            };
            for path in secret.into_iter().chain(ca_file).filter(|path| path.is_relative()) {
                *path = dir.join(&*path);
            }
        }
    }
}

impl PostgresTarget {
    /// The address's host and port; `None` without an address (the catalog refuses any other).
    pub fn host_and_port(&self) -> Option<(&str, u16)> {
        host_and_port(self.address.as_deref()?)
    }
}

fn host_and_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host, port.parse().ok()?)).filter(|_| !host.is_empty())
}

/// PostgreSQL's limit on identifier length, in bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;

fn check_database_role(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_IDENTIFIER_BYTES {
        return Err("must be 1 to 63 bytes");
    }
    if name.starts_with("airlock_") {
        return Err("names starting with `airlock_` are the connector's own per-grant roles");
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

impl PostgresEntry {
    fn into_target(self, resource: &str) -> Result<PostgresTarget, CatalogError> {
        let error =
            |message: &str| CatalogError::Postgres { resource: resource.to_owned(), message: message.to_owned() };
        let secret = match (self.admin_password_env, self.admin_password_file) {
            (Some(var), None) => Some(SecretSource::Env(var)),
            (None, Some(path)) => Some(SecretSource::File(path)),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(error("give admin_password_env or admin_password_file, not both")),
        };
        let admin = match (self.admin_user, secret) {
            (Some(user), Some(secret)) => Some((user, secret)),
            (None, None) => None,
            _ => return Err(error("admin_user and its password (admin_password_env or _file) go together")),
        };
        if self.address.is_some() && admin.is_none() {
            return Err(error("with an address, the connector needs admin_user and admin_password_env or _file"));
        }
        if let Some(address) = &self.address
            && host_and_port(address).is_none()
        {
            return Err(error(&format!("address `{address}` is not host:port")));
        }
        let tls = tls_mode(self.tls.as_deref(), self.ca_file, self.address.is_some()).map_err(|m| error(&m))?;
        let grant_login = match (self.grant_login.as_deref(), self.address.is_some()) {
            (None | Some("certificate"), false) => GrantLogin::Certificate,
            (Some(_), false) => return Err(error("a throwaway cluster's grant roles always log in with certificates")),
            (None | Some("password"), true) => GrantLogin::Password,
            (Some("certificate"), true) if tls == TlsMode::Disable => {
                return Err(error("grant_login = \"certificate\" needs TLS (tls = \"verify-full\" or \"require\")"));
            }
            (Some("certificate"), true) => GrantLogin::Certificate,
            (Some(other), true) => {
                return Err(error(&format!("grant_login `{other}` is not one of `password` or `certificate`")));
            }
        };
        Ok(PostgresTarget {
            grant_login,
            address: self.address,
            database: self.database,
            admin,
            tls,
            allow_superuser_connector: self.allow_superuser_connector,
            privileged_roles: self.privileged_roles,
        })
    }
}

/// The `tls` and `ca_file` settings of a database, with or without an address.
fn tls_mode(tls: Option<&str>, ca_file: Option<PathBuf>, addressed: bool) -> Result<TlsMode, String> {
    if !addressed && (ca_file.is_some() || tls.is_some_and(|tls| tls != "disable")) {
        return Err("tls and ca_file apply to a database with an address; without one, the database is a \
                    throwaway local cluster reached over loopback in plaintext"
            .to_owned());
    }
    let mode = match tls.unwrap_or(if addressed { "verify-full" } else { "disable" }) {
        "disable" => TlsMode::Disable,
        "require" => TlsMode::Require,
        "verify-full" => return Ok(TlsMode::VerifyFull { ca_file }),
        other => return Err(format!("tls `{other}` is not one of `disable`, `require` or `verify-full`")),
    };
    match ca_file {
        Some(_) => Err("ca_file is used only with tls = \"verify-full\" (the default with an address)".to_owned()),
        None => Ok(mode),
    }
}

impl ResourceEntry {
    fn into_resource(self) -> Result<Resource, CatalogError> {
        let resource = self.name.to_string();
        if self.roles.is_empty() {
            return Err(CatalogError::NoRoles { resource });
        }
        let mut roles = BTreeMap::new();
        for (role, entry) in self.roles {
            let name = RoleName::parse(&role).map_err(|source| CatalogError::RoleName {
                resource: resource.clone(),
                role: role.clone(),
                source,
            })?;
            let duration = |field, text: Option<String>, default| match text {
                Some(text) => GrantDuration::parse(&text).map_err(|source| CatalogError::Duration {
                    resource: resource.clone(),
                    role: role.clone(),
                    field,
                    source,
                }),
                None => Ok(GrantDuration::from_secs(default).expect("a default ceiling is a valid duration")),
            };
            let max_duration = duration("max_duration", entry.max_duration, DEFAULT_MAX_DURATION_SECONDS)?;
            let break_glass_max = duration("break_glass_max", entry.break_glass_max, DEFAULT_BREAK_GLASS_MAX_SECONDS)?;
            if !(1..=10).contains(&entry.approvals) {
                return Err(CatalogError::Approvals { resource: resource.clone(), role, approvals: entry.approvals });
            }
            for database_role in &entry.database_roles {
                check_database_role(database_role).map_err(|message| CatalogError::DatabaseRole {
                    resource: resource.clone(),
                    role: role.clone(),
                    database_role: database_role.clone(),
                    message: message.to_owned(),
                })?;
            }
            let (database_roles, allow_statements) = (entry.database_roles, entry.allow_statements);
            let (approvals, keep_tables) = (entry.approvals, entry.keep_tables);
            let role = Role {
                name: name.clone(),
                max_duration,
                approvals,
                break_glass_max,
                database_roles,
                allow_statements,
                keep_tables,
            };
            roles.insert(name, role);
        }
        let postgres = match self.postgres {
            Some(_) if self.kind != "postgres" => return Err(CatalogError::PostgresKind { resource, kind: self.kind }),
            Some(entry) => Some(entry.into_target(&resource)?),
            None => None,
        };
        let audit = match self.audit.as_deref() {
            None | Some("before") => AuditTiming::Before,
            Some("after") => AuditTiming::After,
            Some(other) => {
                return Err(CatalogError::Audit { resource, value: other.to_owned() });
            }
        };
        Ok(Resource {
            audit,
            name: self.name,
            kind: self.kind,
            environment: self.environment,
            tags: self.tags,
            sensitive: self.sensitive,
            bind_credentials_to_source: self.bind_credentials_to_source,
            bind_credentials_to_device: self.bind_credentials_to_device,
            roles,
            postgres,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_error(text: &str, expect: &str) {
        assert_eq!(Catalog::parse(text).unwrap_err().to_string(), expect);
    }

    #[test]
    fn parses_roles_with_defaults() {
        let catalog = Catalog::parse(
            r#"
            [[resource]]
            name = "demo-db"
            kind = "postgres"
            environment = "prod"
            [resource.roles.read]
            max_duration = "1h"
            [resource.roles.admin]
            approvals = 2
            "#,
        )
        .unwrap();
        let db = catalog.resource(&"demo-db".parse().unwrap()).unwrap();
        let read = &db.roles[&"read".parse().unwrap()];
        assert_eq!((read.max_duration.as_secs(), read.approvals), (3600, 1));
        let admin = &db.roles[&"admin".parse().unwrap()];
        assert_eq!((admin.max_duration.as_secs(), admin.approvals), (8 * 3600, 2));
        assert_eq!((read.break_glass_max.as_secs(), admin.break_glass_max.as_secs()), (3600, 3600));
    }

    #[test]
    fn refuses_bad_catalogs() {
        let head = "[[resource]]\nname = \"db\"\nkind = \"postgres\"\nenvironment = \"prod\"\n";
        check_error(head, "resource `db` has no roles");
        check_error(
            &format!("{head}[resource.roles.read]\nmax_duration = \"often\"\n"),
            "resource `db`, role `read`: max_duration: duration `often` is not understood: use forms like `90s`, `15m`, `2h` or `1h30m`",
        );
        check_error(
            &format!("{head}[resource.roles.read]\napprovals = 0\n"),
            "resource `db`, role `read`: approvals must be between 1 and 10, not 0",
        );
        check_error(
            &format!("{head}[resource.roles.read]\n{head}[resource.roles.read]\n"),
            "resource `db` is defined twice",
        );
        check_error(
            &format!("{head}[resource.roles.read]\ndatabase_roles = [\"airlock_x\"]\n"),
            "resource `db`, role `read`: database role `airlock_x`: names starting with `airlock_` are the connector's own per-grant roles",
        );
        let roles = "[resource.roles.read]\n";
        check_error(
            &format!("{head}{roles}[resource.postgres]\ndatabase = \"app\"\naddress = \"db:5432\"\n"),
            "resource `db`: with an address, the connector needs admin_user and admin_password_env or _file",
        );
        check_error(
            &format!(
                "{head}{roles}[resource.postgres]\ndatabase = \"app\"\naddress = \"db\"\nadmin_user = \"a\"\nadmin_password_env = \"P\"\n"
            ),
            "resource `db`: address `db` is not host:port",
        );
        // A password written inline is refused outright.
        let inline = format!("{head}{roles}[resource.postgres]\ndatabase = \"app\"\nadmin_password = \"hunter2\"\n");
        assert!(Catalog::parse(&inline).unwrap_err().to_string().contains("unknown field `admin_password`"));
        let addressed = "[resource.postgres]\ndatabase = \"app\"\naddress = \"db:5432\"\nadmin_user = \"a\"\nadmin_password_env = \"P\"\n";
        check_error(
            &format!("{head}{roles}{addressed}tls = \"prefer\"\n"),
            "resource `db`: tls `prefer` is not one of `disable`, `require` or `verify-full`",
        );
        for tls in ["disable", "require"] {
            check_error(
                &format!("{head}{roles}{addressed}tls = \"{tls}\"\nca_file = \"ca.pem\"\n"),
                "resource `db`: ca_file is used only with tls = \"verify-full\" (the default with an address)",
            );
        }
        let throwaway = "[resource.postgres]\ndatabase = \"app\"\n";
        for setting in ["tls = \"verify-full\"", "tls = \"require\"", "ca_file = \"ca.pem\""] {
            check_error(
                &format!("{head}{roles}{throwaway}{setting}\n"),
                "resource `db`: tls and ca_file apply to a database with an address; without one, the database is a throwaway local cluster reached over loopback in plaintext",
            );
        }
        let web = "[[resource]]\nname = \"web\"\nkind = \"ssh\"\nenvironment = \"prod\"\n";
        check_error(
            &format!("{web}{roles}[resource.postgres]\ndatabase = \"app\"\n"),
            "resource `web`: a [resource.postgres] section needs kind = \"postgres\", not `ssh`",
        );
    }

    #[test]
    fn postgres_targets_name_their_secrets() {
        let mut catalog = Catalog::parse(
            r#"
            [[resource]]
            name = "orders"
            kind = "postgres"
            environment = "prod"
            [resource.postgres]
            address = "10.0.0.5:5432"
            database = "orders"
            admin_user = "airlock_connector"
            admin_password_file = "secrets/orders.password"
            [resource.roles.read]
            database_roles = ["pg_read_all_data"]
            "#,
        )
        .unwrap();
        catalog.rebase_files(Path::new("/etc/airlock"));
        let orders = catalog.resource(&"orders".parse().unwrap()).unwrap();
        let target = orders.postgres.as_ref().unwrap();
        assert_eq!(target.address.as_deref(), Some("10.0.0.5:5432"));
        let secret = SecretSource::File("/etc/airlock/secrets/orders.password".into());
        assert_eq!(target.admin, Some(("airlock_connector".to_owned(), secret)));
        assert_eq!(orders.roles[&"read".parse().unwrap()].database_roles, ["pg_read_all_data"]);
        assert_eq!(target.tls, TlsMode::VerifyFull { ca_file: None }, "an address verifies certificates by default");
    }

    #[test]
    fn tls_settings_of_a_database() {
        #[track_caller]
        fn check(postgres: &str, expect: TlsMode) {
            let text = format!(
                "[[resource]]\nname = \"db\"\nkind = \"postgres\"\nenvironment = \"prod\"\n\
                 [resource.roles.read]\n[resource.postgres]\ndatabase = \"app\"\n{postgres}"
            );
            let mut catalog = Catalog::parse(&text).unwrap();
            catalog.rebase_files(Path::new("/etc/airlock"));
            let target = catalog.resource(&"db".parse().unwrap()).unwrap().postgres.clone().unwrap();
            assert_eq!(target.tls, expect);
        }
        let address = "address = \"db.internal:5432\"\nadmin_user = \"a\"\nadmin_password_env = \"P\"\n";
        check(address, TlsMode::VerifyFull { ca_file: None });
        check(&format!("{address}tls = \"disable\""), TlsMode::Disable);
        check(&format!("{address}tls = \"require\""), TlsMode::Require);
        let ca_file = Some(PathBuf::from("/etc/airlock/certs/db-ca.pem"));
        check(&format!("{address}ca_file = \"certs/db-ca.pem\""), TlsMode::VerifyFull { ca_file: ca_file.clone() });
        check(
            &format!("{address}tls = \"verify-full\"\nca_file = \"/etc/airlock/certs/db-ca.pem\""),
            TlsMode::VerifyFull { ca_file },
        );
        check("", TlsMode::Disable);
        check("tls = \"disable\"", TlsMode::Disable);
    }
}
