//! The catalog: which resources exist, which roles each offers, how long a role may be held and
//! how many distinct approvals it needs. Policies decide *whether*; the catalog decides *what*.

use std::collections::BTreeMap;

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
    #[error("resource `{resource}`, role `{role}`: max_duration: {source}")]
    MaxDuration { resource: String, role: String, source: DurationError },
    #[error("resource `{resource}`, role `{role}`: approvals must be between 1 and 10, not {approvals}")]
    Approvals { resource: String, role: String, approvals: u32 },
}

/// The default ceiling of a role that names none.
pub const DEFAULT_MAX_DURATION_SECONDS: u64 = 8 * 3600;

/// One role on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: RoleName,
    pub max_duration: GrantDuration,
    pub approvals: u32,
}

/// One resource of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: ResourceName,
    pub kind: String,
    pub environment: String,
    pub tags: Vec<String>,
    pub sensitive: bool,
    pub roles: BTreeMap<RoleName, Role>,
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
    roles: BTreeMap<String, RoleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    max_duration: Option<String>,
    #[serde(default = "one")]
    approvals: u32,
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
            let max_duration = match entry.max_duration {
                Some(text) => GrantDuration::parse(&text).map_err(|source| CatalogError::MaxDuration {
                    resource: resource.clone(),
                    role: role.clone(),
                    source,
                })?,
                None => GrantDuration::from_secs(DEFAULT_MAX_DURATION_SECONDS)
                    .expect("the default ceiling is a valid duration"),
            };
            if !(1..=10).contains(&entry.approvals) {
                return Err(CatalogError::Approvals { resource: resource.clone(), role, approvals: entry.approvals });
            }
            roles.insert(name.clone(), Role { name, max_duration, approvals: entry.approvals });
        }
        Ok(Resource {
            name: self.name,
            kind: self.kind,
            environment: self.environment,
            tags: self.tags,
            sensitive: self.sensitive,
            roles,
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
    }
}
