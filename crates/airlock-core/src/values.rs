//! Value types of a request: how long, and why.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration `{0}` is not understood: use forms like `90s`, `15m`, `2h` or `1h30m`")]
    Unparsable(String),
    #[error("duration `{0}` is shorter than the minimum of 1s")]
    TooShort(String),
    #[error("duration `{0}` is longer than the 7-day limit")]
    TooLong(String),
}

/// A duration of access: whole seconds, at least one second, at most seven days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GrantDuration(u64);

impl GrantDuration {
    const MAX_SECONDS: u64 = 7 * 24 * 3600;

    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let parsed = humantime::parse_duration(text.trim()).map_err(|_| DurationError::Unparsable(text.to_owned()))?;
        if parsed.subsec_nanos() != 0 || parsed.as_secs() == 0 {
            return Err(DurationError::TooShort(text.to_owned()));
        }
        Self::from_secs(parsed.as_secs()).ok_or_else(|| DurationError::TooLong(text.to_owned()))
    }

    pub fn from_secs(seconds: u64) -> Option<Self> {
        (1..=Self::MAX_SECONDS).contains(&seconds).then_some(Self(seconds))
    }

    pub fn as_secs(&self) -> u64 {
        self.0
    }

    pub fn as_time(&self) -> time::Duration {
        time::Duration::seconds(self.0 as i64)
    }
}

impl fmt::Display for GrantDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(Duration::from_secs(self.0)).fmt(f)
    }
}

impl TryFrom<String> for GrantDuration {
    type Error = DurationError;
    fn try_from(value: String) -> Result<Self, DurationError> {
        Self::parse(&value)
    }
}

impl From<GrantDuration> for String {
    fn from(value: GrantDuration) -> String {
        value.to_string()
    }
}

/// Why a reason was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    #[error("a reason is required")]
    Empty,
    #[error("the reason is longer than 1000 characters")]
    TooLong,
}

/// A non-empty, trimmed, human-written reason (for a request, a denial or a revocation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reason(String);

impl Reason {
    pub fn parse(text: &str) -> Result<Self, ReasonError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ReasonError::Empty);
        }
        if trimmed.chars().count() > 1000 {
            return Err(ReasonError::TooLong);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Reason {
    type Error = ReasonError;
    fn try_from(value: String) -> Result<Self, ReasonError> {
        Self::parse(&value)
    }
}

impl From<Reason> for String {
    fn from(value: Reason) -> String {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expect: Result<u64, &str>) {
        let got = GrantDuration::parse(input).map(|d| d.as_secs()).map_err(|e| e.to_string());
        assert_eq!(got, expect.map_err(str::to_owned));
    }

    #[test]
    fn durations() {
        check("1s", Ok(1));
        check("90s", Ok(90));
        check("15m", Ok(900));
        check("2h", Ok(7200));
        check("1h30m", Ok(5400));
        check("0s", Err("duration `0s` is shorter than the minimum of 1s"));
        check("500ms", Err("duration `500ms` is shorter than the minimum of 1s"));
        check("8d", Err("duration `8d` is longer than the 7-day limit"));
        check("soon", Err("duration `soon` is not understood: use forms like `90s`, `15m`, `2h` or `1h30m`"));
    }

    #[test]
    fn reasons() {
        assert_eq!(Reason::parse("  "), Err(ReasonError::Empty));
        assert_eq!(Reason::parse(" INC-42 ").unwrap().as_str(), "INC-42");
        assert_eq!(Reason::parse(&"x".repeat(1001)), Err(ReasonError::TooLong));
    }
}
