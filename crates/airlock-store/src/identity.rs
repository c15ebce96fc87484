//! Who may call: bearer tokens (API tokens and broker sessions, kept as SHA-256 hashes), users
//! from the identity provider, and TOTP authenticators. Authentication reads outside a
//! transaction; every change happens inside a use case's [`Tx`].

use airlock_core::ids::{GroupName, TokenId, UserName};
use airlock_core::mfa::Attempts;
use airlock_core::scope::Scopes;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use crate::rows::{self, User, ms, time_of_ms, to_body};
use crate::{Store, StoreError, Tx};

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Made by an administrator, for a service account or a local user.
    Api,
    /// A broker session begun by signing in: a short-lived access token renewed by refresh.
    Login,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Login => "login",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [TokenKind::Api, TokenKind::Login].into_iter().find(|k| k.as_str() == text)
    }
}

/// A token as stored: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    pub user: UserName,
    pub kind: TokenKind,
    pub scopes: Scopes,
    pub created_at: OffsetDateTime,
    /// When the token (a login: the whole session) stops working; `None`: never.
    pub expires_at: Option<OffsetDateTime>,
    /// A login's current access token stops working here.
    pub access_expires_at: Option<OffsetDateTime>,
    pub last_used_at: OffsetDateTime,
    pub ended_at: Option<OffsetDateTime>,
    pub ended_reason: Option<String>,
    pub mfa_at: Option<OffsetDateTime>,
}

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub id: TokenId,
    pub user: &'a UserName,
    pub kind: TokenKind,
    pub hash: &'a str,
    pub scopes: &'a Scopes,
    pub now: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub access_expires_at: Option<OffsetDateTime>,
    pub refresh_hash: Option<&'a str>,
    pub idp_refresh: Option<&'a str>,
}

/// A login's next access and refresh tokens, replacing the refresh token presented.
#[derive(Debug, Clone)]
pub struct Renewal<'a> {
    pub hash: &'a str,
    pub access_expires_at: OffsetDateTime,
    pub refresh_hash: &'a str,
    pub used_refresh_hash: &'a str,
    pub idp_refresh: Option<&'a str>,
    pub now: OffsetDateTime,
}

/// What a refresh token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshLookup {
    /// The login's current refresh token, with its sealed identity-provider refresh token.
    Current(Token, Option<String>),
    /// A refresh token already exchanged: somebody is replaying it.
    Reused(Token),
    Unknown,
}

/// A TOTP authenticator as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMfa {
    pub sealed_seed: String,
    pub confirmed_at: Option<OffsetDateTime>,
    pub attempts: Attempts,
}

/// A query reading whole [`Token`]s: `tokens_where!("WHERE …")`.
macro_rules! tokens_where {
    ($condition:literal) => {
        concat!(
            "SELECT id, user, kind, scopes_json, created_ms, expires_ms, access_expires_ms, last_used_ms,
                    ended_ms, ended_reason, mfa_ms, idp_refresh
             FROM tokens ",
            $condition
        )
    };
}

fn token(row: &SqliteRow) -> Result<Token, StoreError> {
    let id: String = row.get("id");
    let corrupt = |message: String| StoreError::Corrupt { id: id.clone(), message };
    let user: String = row.get("user");
    let kind: String = row.get("kind");
    let scopes: String = row.get("scopes_json");
    let time = |column: &str| row.get::<Option<i64>, _>(column).map(time_of_ms);
    Ok(Token {
        id: id.parse().map_err(|e: uuid::Error| corrupt(e.to_string()))?,
        user: UserName::parse(&user).map_err(|e| corrupt(e.to_string()))?,
        kind: TokenKind::parse(&kind).ok_or_else(|| corrupt(format!("unknown token kind `{kind}`")))?,
        scopes: serde_json::from_str(&scopes).map_err(|e| corrupt(e.to_string()))?,
        created_at: time_of_ms(row.get("created_ms")),
        expires_at: time("expires_ms"),
        access_expires_at: time("access_expires_ms"),
        last_used_at: time_of_ms(row.get("last_used_ms")),
        ended_at: time("ended_ms"),
        ended_reason: row.get("ended_reason"),
        mfa_at: time("mfa_ms"),
    })
}

impl Store {
    /// The token whose hash is `hash`, ended or not, and its user.
    pub async fn bearer(&self, hash: &str) -> Result<Option<(Token, User)>, StoreError> {
        let row = sqlx::query(
            "SELECT t.id, t.user, t.kind, t.scopes_json, t.created_ms, t.expires_ms, t.access_expires_ms,
                    t.last_used_ms, t.ended_ms, t.ended_reason, t.mfa_ms,
                    u.name, u.groups_json, u.service, u.disabled, u.created_ms AS user_created_ms
             FROM tokens t JOIN users u ON u.name = t.user WHERE t.hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((token(&row)?, rows::user_from(&row, "user_created_ms")?)))
    }

    /// Marks a token used at `now` when its last use is older than `before`, so that an API
    /// token in constant use costs one write a minute, not one per call.
    pub async fn touch_token(
        &self,
        id: TokenId,
        now: OffsetDateTime,
        before: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let touched = sqlx::query("UPDATE tokens SET last_used_ms = ? WHERE id = ? AND last_used_ms < ?")
            .bind(ms(now))
            .bind(id.to_string())
            .bind(ms(before))
            .execute(&self.pool)
            .await
            .map_err(StoreError::from);
        self.health.note(&touched, |done| done.rows_affected() > 0);
        touched.map(drop)
    }

    /// A user's tokens, newest first, the ended ones too.
    pub async fn tokens_of(&self, user: &UserName) -> Result<Vec<Token>, StoreError> {
        let rows = sqlx::query(tokens_where!("WHERE user = ? ORDER BY created_ms DESC, id DESC"))
            .bind(user.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token).collect()
    }
}

impl Tx {
    pub async fn insert_token(&mut self, new: &NewToken<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, user, kind, hash, scopes_json, created_ms, expires_ms, access_expires_ms,
                                 refresh_hash, last_used_ms, idp_refresh)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(new.id.to_string())
        .bind(new.user.as_str())
        .bind(new.kind.as_str())
        .bind(new.hash)
        .bind(to_body(new.scopes))
        .bind(ms(new.now))
        .bind(new.expires_at.map(ms))
        .bind(new.access_expires_at.map(ms))
        .bind(new.refresh_hash)
        .bind(ms(new.now))
        .bind(new.idp_refresh)
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    pub async fn token(&mut self, id: TokenId) -> Result<Option<Token>, StoreError> {
        let row =
            sqlx::query(tokens_where!("WHERE id = ?")).bind(id.to_string()).fetch_optional(&mut *self.inner).await?;
        row.as_ref().map(token).transpose()
    }

    /// Ends a token that has not ended yet; says whether it did.
    pub async fn end_token(&mut self, id: TokenId, now: OffsetDateTime, reason: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tokens SET ended_ms = ?, ended_reason = ?, idp_refresh = NULL WHERE id = ? AND ended_ms IS NULL",
        )
        .bind(ms(now))
        .bind(reason)
        .bind(id.to_string())
        .execute(&mut *self.inner)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The tokens of `user` that have not ended.
    pub async fn live_tokens_of(&mut self, user: &UserName) -> Result<Vec<Token>, StoreError> {
        let rows = sqlx::query(tokens_where!("WHERE user = ? AND ended_ms IS NULL ORDER BY created_ms"))
            .bind(user.as_str())
            .fetch_all(&mut *self.inner)
            .await?;
        rows.iter().map(token).collect()
    }

    /// Logins that have not ended but are past their end or unused since `idle_before`.
    pub async fn lapsed_logins(
        &mut self,
        now: OffsetDateTime,
        idle_before: OffsetDateTime,
    ) -> Result<Vec<Token>, StoreError> {
        let rows = sqlx::query(tokens_where!(
            "WHERE kind = 'login' AND ended_ms IS NULL AND (expires_ms <= ? OR last_used_ms < ?)"
        ))
        .bind(ms(now))
        .bind(ms(idle_before))
        .fetch_all(&mut *self.inner)
        .await?;
        rows.iter().map(token).collect()
    }

    /// The login a refresh token belongs to, now or before its last renewal.
    pub async fn refresh_lookup(&mut self, refresh_hash: &str) -> Result<RefreshLookup, StoreError> {
        let current = sqlx::query(tokens_where!("WHERE refresh_hash = ?"))
            .bind(refresh_hash)
            .fetch_optional(&mut *self.inner)
            .await?;
        if let Some(row) = current {
            return Ok(RefreshLookup::Current(token(&row)?, row.get("idp_refresh")));
        }
        let reused = sqlx::query(tokens_where!("WHERE used_refresh_hash = ?"))
            .bind(refresh_hash)
            .fetch_optional(&mut *self.inner)
            .await?;
        Ok(match reused {
            Some(row) => RefreshLookup::Reused(token(&row)?),
            None => RefreshLookup::Unknown,
        })
    }

    /// Gives a login its next access and refresh tokens.
    pub async fn renew_login(&mut self, id: TokenId, renewal: &Renewal<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tokens SET hash = ?, access_expires_ms = ?, refresh_hash = ?, used_refresh_hash = ?,
                               idp_refresh = COALESCE(?, idp_refresh), last_used_ms = ?
             WHERE id = ? AND ended_ms IS NULL",
        )
        .bind(renewal.hash)
        .bind(ms(renewal.access_expires_at))
        .bind(renewal.refresh_hash)
        .bind(renewal.used_refresh_hash)
        .bind(renewal.idp_refresh)
        .bind(ms(renewal.now))
        .bind(id.to_string())
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    /// Records that the holder of token `id` proved a second factor at `now`.
    pub async fn set_token_mfa(&mut self, id: TokenId, now: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE tokens SET mfa_ms = ? WHERE id = ?")
            .bind(ms(now))
            .bind(id.to_string())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    /// The user the identity provider knows as `subject`.
    pub async fn user_by_subject(&mut self, subject: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT name, groups_json, service, disabled, created_ms FROM users WHERE subject = ?")
            .bind(subject)
            .fetch_optional(&mut *self.inner)
            .await?;
        row.map(|r| rows::user(&r)).transpose()
    }

    /// The identity provider's subject of user `name`, if they sign in by single sign-on.
    pub async fn subject_of(&mut self, name: &UserName) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT subject FROM users WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&mut *self.inner)
            .await?;
        Ok(row.and_then(|r| r.get("subject")))
    }

    pub async fn set_user_groups(&mut self, name: &UserName, groups: &[GroupName]) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET groups_json = ? WHERE name = ?")
            .bind(rows::groups_json(groups))
            .bind(name.as_str())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    pub async fn mfa(&mut self, user: &UserName) -> Result<Option<StoredMfa>, StoreError> {
        let row = sqlx::query(
            "SELECT sealed_seed, confirmed_ms, last_step, failures, failures_since_ms FROM mfa WHERE user = ?",
        )
        .bind(user.as_str())
        .fetch_optional(&mut *self.inner)
        .await?;
        Ok(row.map(|row| StoredMfa {
            sealed_seed: row.get("sealed_seed"),
            confirmed_at: row.get::<Option<i64>, _>("confirmed_ms").map(time_of_ms),
            attempts: Attempts {
                last_step: u64::try_from(row.get::<i64, _>("last_step")).unwrap_or(0),
                failures: u32::try_from(row.get::<i64, _>("failures")).unwrap_or(u32::MAX),
                failures_since: row.get::<Option<i64>, _>("failures_since_ms").map(time_of_ms),
            },
        }))
    }

    /// Starts (or restarts, while unconfirmed) a user's enrollment with a new sealed seed.
    pub async fn put_unconfirmed_mfa(&mut self, user: &UserName, sealed_seed: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mfa (user, sealed_seed) VALUES (?, ?)
             ON CONFLICT (user) DO UPDATE SET sealed_seed = excluded.sealed_seed, confirmed_ms = NULL,
                 last_step = 0, failures = 0, failures_since_ms = NULL
             WHERE confirmed_ms IS NULL",
        )
        .bind(user.as_str())
        .bind(sealed_seed)
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    /// Stores what checking a code left behind, and confirms the enrollment at `confirmed_at`.
    pub async fn update_mfa(
        &mut self,
        user: &UserName,
        attempts: &Attempts,
        confirmed_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mfa SET last_step = ?, failures = ?, failures_since_ms = ?,
                 confirmed_ms = COALESCE(confirmed_ms, ?)
             WHERE user = ?",
        )
        .bind(i64::try_from(attempts.last_step).unwrap_or(i64::MAX))
        .bind(i64::from(attempts.failures))
        .bind(attempts.failures_since.map(ms))
        .bind(confirmed_at.map(ms))
        .bind(user.as_str())
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    /// Removes a user's authenticator (an administrator resetting a lost phone).
    pub async fn delete_mfa(&mut self, user: &UserName) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM mfa WHERE user = ?").bind(user.as_str()).execute(&mut *self.inner).await?;
        Ok(done.rows_affected() == 1)
    }
}
