//! Identifiers. Distinct ids are distinct types so that a grant id can never be passed where a
//! request id is expected; names of people, resources and roles are checked once, at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} `{value}` is longer than 64 characters")]
    TooLong { kind: &'static str, value: String },
    #[error(
        "{kind} `{value}` may only contain letters, digits, `-`, `_` and `.`, and must start with a letter or digit"
    )]
    BadCharacter { kind: &'static str, value: String },
}

fn check_name(kind: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if value.chars().count() > 64 {
        return Err(NameError::TooLong { kind, value: value.to_owned() });
    }
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !(first_ok && rest_ok) {
        return Err(NameError::BadCharacter { kind, value: value.to_owned() });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, NameError> {
                check_name($kind, value)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::parse(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A principal's name: a person or a service account.
    UserName,
    "user name"
);
name_type!(
    /// A group a principal belongs to.
    GroupName,
    "group name"
);
name_type!(
    /// A resource in the catalog.
    ResourceName,
    "resource name"
);
name_type!(
    /// A role on a resource.
    RoleName,
    "role name"
);
name_type!(
    /// An incident, as the incident tool that opened it names it (`INC-1234`).
    IncidentId,
    "incident id"
);
name_type!(
    /// A playbook of the configuration.
    PlaybookName,
    "playbook name"
);
name_type!(
    /// A device's label, chosen by its user (by default the machine's host name).
    DeviceName,
    "device name"
);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an id made by the caller (core has no randomness of its own).
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(value: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(value).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// One access request.
    RequestId
);
id_type!(
    /// One grant, the time-bound permission an approved request produces.
    GrantId
);
id_type!(
    /// One bearer token for the API: an API token, or a broker session's (a login's). Not secret.
    TokenId
);
id_type!(
    /// One device enrolled by a user: a key pair on their machine. Not secret.
    DeviceId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, ok: bool) {
        assert_eq!(UserName::parse(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn names() {
        check("alice", true);
        check("svc.deploy-bot_2", true);
        check("", false);
        check("-alice", false);
        check("al ice", false);
        check("alice\"", false);
        check(&"a".repeat(65), false);
        check(&"a".repeat(64), true);
    }
}
