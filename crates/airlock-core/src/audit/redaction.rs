//! Redaction before an event enters the chain, keeping a salted commitment to what was removed.
//!
//! A value under a configured field name (at any depth of the details, names compared without
//! case), and every match of a configured pattern inside a string value, is replaced by a marker
//! `[redacted sha256:<hex>]`, where the hex is SHA-256(salt ‖ value) with a fresh random 16-byte
//! salt. The chain hashes the redacted details, so it stays intact and verifiable; the salt is
//! kept apart (and may be deleted to make the value unprovable for good). Whoever later produces
//! the original value can prove it was the one recorded: with the salt, the commitment is
//! recomputed ([`commitment`]). Without the salt, the commitment reveals nothing, even about a
//! short or guessable value.
//!
//! The field [`ORIGINAL_STATEMENT`] is always redacted: a gateway that records statements with
//! their literals replaced sends the original text there, so only its commitment is kept.

use regex::Regex;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The field that carries a statement's original text next to its literal-free form.
pub const ORIGINAL_STATEMENT: &str = "text_original";

const MARKER_PREFIX: &str = "[redacted sha256:";

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactionError {
    #[error("redaction pattern `{pattern}` is not a valid regular expression: {message}")]
    Pattern { pattern: String, message: String },
    #[error("redaction field names cannot be empty")]
    EmptyField,
}

/// What to redact.
#[derive(Debug, Clone)]
pub struct RedactionRules {
    fields: Vec<String>,
    patterns: Vec<Regex>,
}

/// One redacted value's commitment and the salt that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    /// SHA-256(salt ‖ value), hex: what the record holds.
    pub digest: String,
    pub salt: [u8; 16],
}

/// SHA-256(salt ‖ value), hex.
pub fn commitment(salt: &[u8; 16], value: &str) -> String {
    hex::encode(Sha256::new().chain_update(salt).chain_update(value.as_bytes()).finalize())
}

/// The commitments named by markers in a text (a record's details).
pub fn markers(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices(MARKER_PREFIX).filter_map(|(at, _)| {
        let digest = text.get(at + MARKER_PREFIX.len()..at + MARKER_PREFIX.len() + 64)?;
        digest.bytes().all(|b| b.is_ascii_hexdigit()).then_some(digest)
    })
}

impl RedactionRules {
    /// Rules for `fields` (names) and `patterns` (regular expressions), plus [`ORIGINAL_STATEMENT`].
    pub fn new(fields: &[String], patterns: &[String]) -> Result<Self, RedactionError> {
        if fields.iter().any(|f| f.trim().is_empty()) {
            return Err(RedactionError::EmptyField);
        }
        let patterns = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| RedactionError::Pattern { pattern: p.clone(), message: e.to_string() }))
            .collect::<Result<_, _>>()?;
        let mut fields: Vec<String> = fields.iter().map(|f| f.trim().to_lowercase()).collect();
        fields.push(ORIGINAL_STATEMENT.to_owned());
        Ok(Self { fields, patterns })
    }

    /// Redacts `details` in place, drawing a fresh salt for each value; returns the commitments.
    pub fn redact(&self, details: &mut Value, salt: &mut dyn FnMut() -> [u8; 16]) -> Vec<Commitment> {
        let mut made = Vec::new();
        self.walk(details, salt, &mut made);
        made
    }

    fn walk(&self, value: &mut Value, salt: &mut dyn FnMut() -> [u8; 16], made: &mut Vec<Commitment>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    if self.fields.iter().any(|f| f.eq_ignore_ascii_case(key)) {
                        let text = match &mut *inner {
                            Value::String(text) => std::mem::take(text),
                            other => other.to_string(),
                        };
                        *inner = Value::String(seal(&text, salt, made));
                    } else {
                        self.walk(inner, salt, made);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.walk(item, salt, made)),
            Value::String(text) => {
                for pattern in &self.patterns {
                    if pattern.is_match(text) {
                        *text =
                            pattern.replace_all(text, |found: &regex::Captures<'_>| seal(&found[0], salt, made)).into();
                    }
                }
            }
            _ => {}
        }
    }
}

/// The marker for `value`, recording its commitment.
fn seal(value: &str, salt: &mut dyn FnMut() -> [u8; 16], made: &mut Vec<Commitment>) -> String {
    let salt = salt();
    let digest = commitment(&salt, value);
    let marker = format!("{MARKER_PREFIX}{digest}]");
    made.push(Commitment { digest, salt });
    marker
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn counter() -> impl FnMut() -> [u8; 16] {
        let mut n = 0u8;
        move || {
            n += 1;
            [n; 16]
        }
    }

    #[test]
    fn fields_and_patterns_become_commitments_that_open_with_their_salt() {
        let rules = RedactionRules::new(&["Password".into(), "token".into()], &[r"\b\d{16}\b".into()]).unwrap();
        let mut details = json!({
            "user": "alice",
            "password": "hunter2",
            "nested": {"TOKEN": {"a": 1}, "note": "card 4111111111111111 then 4000000000000002"},
            "list": ["plain", "4111111111111111"],
            "text": "UPDATE t SET x = $1",
            "text_original": "UPDATE t SET x = 'secret'",
        });
        let made = rules.redact(&mut details, &mut counter());
        assert_eq!(made.len(), 6);
        let text = details.to_string();
        for secret in ["hunter2", "4111111111111111", "4000000000000002", "'secret'", "\"a\":1"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(details["user"], "alice");
        assert_eq!(details["text"], "UPDATE t SET x = $1");
        let password = &made[0];
        assert_eq!(details["password"], format!("[redacted sha256:{}]", password.digest));
        assert_eq!(commitment(&password.salt, "hunter2"), password.digest);
        assert_ne!(commitment(&password.salt, "hunter3"), password.digest);
        let found: Vec<&str> = markers(&text).collect();
        assert_eq!(found.len(), 6);
        assert!(found.contains(&password.digest.as_str()));
        assert!(details["nested"]["note"].as_str().unwrap().starts_with("card [redacted sha256:"));
    }

    #[test]
    fn the_original_statement_is_always_redacted_and_bad_patterns_are_refused() {
        let rules = RedactionRules::new(&[], &[]).unwrap();
        let mut details = json!({"text_original": "SELECT 'x'"});
        assert_eq!(rules.redact(&mut details, &mut counter()).len(), 1);
        assert!(RedactionRules::new(&[], &["(".into()]).unwrap_err().to_string().contains("`(`"));
        assert_eq!(RedactionRules::new(&[" ".into()], &[]).unwrap_err(), RedactionError::EmptyField);
    }
}
