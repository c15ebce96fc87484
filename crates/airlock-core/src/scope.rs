//! What a bearer token may be used for. Every authenticated API route needs one scope; a token
//! holds a set of them, or all of them.
//!
//! Scopes narrow what a token can do, never widen it: the caller's groups and the policies still
//! decide every use case. A scoped token is how a CI job gets `request` without `review`, or a
//! monitoring scraper `audit` and nothing else.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One kind of use of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// List and read requests, grants, reviews and incidents.
    Read,
    /// Ask for access: requests, break-glass, cancelling, gateway credentials.
    Request,
    /// Decide on others' access: approve, deny, revoke, review break-glass.
    Review,
    /// Open and close incidents.
    Incidents,
    /// Read the audit trail, reports and metrics.
    Audit,
    /// What a gateway running apart asks and records.
    Gateway,
}

impl Scope {
    pub const ALL: [Scope; 6] =
        [Scope::Read, Scope::Request, Scope::Review, Scope::Incidents, Scope::Audit, Scope::Gateway];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Request => "request",
            Scope::Review => "review",
            Scope::Incidents => "incidents",
            Scope::Audit => "audit",
            Scope::Gateway => "gateway",
        }
    }

    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| ScopeError(text.to_owned()))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope `{0}` (scopes: read, request, review, incidents, audit, gateway)")]
pub struct ScopeError(pub String);

/// The scopes a token holds. Stored and shown as a list of names, `["*"]` for every scope, so a
/// scope added in a later version is held by unrestricted tokens and by no restricted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scopes {
    All,
    Only(BTreeSet<Scope>),
}

const ALL_SCOPES: &str = "*";

impl Scopes {
    /// Scopes from names; none at all means every scope.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, ScopeError> {
        let mut only = BTreeSet::new();
        for name in names {
            if name == ALL_SCOPES {
                return Ok(Scopes::All);
            }
            only.insert(Scope::parse(name)?);
        }
        Ok(if only.is_empty() { Scopes::All } else { Scopes::Only(only) })
    }

    pub fn allows(&self, scope: Scope) -> bool {
        match self {
            Scopes::All => true,
            Scopes::Only(only) => only.contains(&scope),
        }
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            Scopes::All => vec![ALL_SCOPES.to_owned()],
            Scopes::Only(only) => only.iter().map(|s| s.as_str().to_owned()).collect(),
        }
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        Scopes::parse(names.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_names_or_a_star_is_every_scope() {
        assert_eq!(Scopes::parse([]).unwrap(), Scopes::All);
        assert_eq!(Scopes::parse(["read", "*"]).unwrap(), Scopes::All);
        assert!(Scope::ALL.iter().all(|s| Scopes::All.allows(*s)));
    }

    #[test]
    fn a_restricted_set_allows_only_its_scopes() {
        let scopes = Scopes::parse(["request", "read"]).unwrap();
        assert!(scopes.allows(Scope::Request) && scopes.allows(Scope::Read));
        assert!(!scopes.allows(Scope::Review) && !scopes.allows(Scope::Gateway));
        assert_eq!(scopes.to_string(), "read,request");
    }

    #[test]
    fn unknown_names_are_refused() {
        assert_eq!(Scopes::parse(["root"]), Err(ScopeError("root".into())));
        assert!(serde_json::from_str::<Scopes>(r#"["admin"]"#).is_err());
    }

    #[test]
    fn stored_names_read_back() {
        for scopes in [Scopes::All, Scopes::parse(["audit"]).unwrap()] {
            let text = serde_json::to_string(&scopes).unwrap();
            assert_eq!(serde_json::from_str::<Scopes>(&text).unwrap(), scopes);
        }
        assert_eq!(serde_json::to_string(&Scopes::All).unwrap(), r#"["*"]"#);
    }
}
