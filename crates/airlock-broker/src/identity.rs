//! Who is calling: authenticating bearer tokens, API tokens (made, rotated, revoked by
//! administrators), and adding and disabling users.
//!
//! A bearer token is looked up by its SHA-256. It works while it has not ended, has not expired,
//! its user is enabled, and — for a login's access token — while the login has been used within
//! `[identity] session_idle`. Ending anything about a user (disabling them) ends every token
//! they hold in the same transaction.

use std::net::IpAddr;

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::ids::{GroupName, TokenId, UserName};
use airlock_core::policy::Principal;
use airlock_core::scope::Scopes;
use airlock_store::{NewToken, Token, TokenKind, Tx};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::broker::{Broker, BrokerError, Caller, Ended, new_id};
use crate::devices::PresentedProof;
use crate::secrets;

/// A token is marked used at most this often (a write per call would be a write per call).
pub const TOUCH_EVERY: Duration = Duration::seconds(30);

/// A new API token: what is stored, and its secret, shown once.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: Token,
    pub secret: String,
}

/// Whether `token` is over at `now`: ended, past its end, or a login unused for `session_idle`.
/// (A login's short-lived access token is apart: its refresh token may still renew it.)
pub fn lapsed(token: &Token, now: OffsetDateTime, session_idle: Duration) -> bool {
    token.ended_at.is_some()
        || token.expires_at.is_some_and(|end| end <= now)
        || (token.kind == TokenKind::Login && token.last_used_at + session_idle <= now)
}

/// Whether `token` authenticates a call at `now` (its user enabled or not).
fn works(token: &Token, now: OffsetDateTime, session_idle: Duration) -> bool {
    let access_expired = token.kind == TokenKind::Login && token.access_expires_at.is_none_or(|end| end <= now);
    !lapsed(token, now, session_idle) && !access_expired
}

impl Broker {
    /// The caller presenting `bearer`, and the scopes their token holds. A device proof, when
    /// the call carries one, must hold ([`Broker::device_of_call`]).
    pub async fn authenticate(
        &self,
        bearer: &str,
        source_ip: IpAddr,
        device_proof: Option<PresentedProof<'_>>,
    ) -> Result<(Caller, Scopes), BrokerError> {
        let now = self.clock().now();
        let Some((token, user)) = self.store().bearer(&secrets::token_hash(bearer)).await? else {
            return Err(BrokerError::Unauthenticated);
        };
        if user.disabled || !works(&token, now, self.settings.identity.session_idle.as_time()) {
            return Err(BrokerError::Unauthenticated);
        }
        if token.last_used_at + TOUCH_EVERY <= now {
            // Marking the token used is bookkeeping: while the store cannot write, the call goes
            // on (reads still work) and a later call marks it.
            match self.store().touch_token(token.id, now, now - TOUCH_EVERY).await {
                Err(error) if error.fault().is_some() => {
                    tracing::debug!(%error, "cannot mark a token used");
                }
                touched => touched?,
            }
        }
        let device = match &device_proof {
            Some(proof) => self.device_of_call(&user.name, bearer, proof, now).await?,
            None => None,
        };
        let caller =
            Caller { principal: Principal::from(user), source_ip, mfa_at: token.mfa_at, token: Some(token.id), device };
        Ok((caller, token.scopes))
    }

    /// Adds a user and returns their first API token (every scope, no expiry, named in the
    /// `user.added` record), which is never stored or shown again.
    pub async fn add_user(
        &self,
        name: &UserName,
        groups: &[GroupName],
        service: bool,
        actor: &str,
    ) -> Result<String, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        if tx.user(name).await?.is_some() {
            return Err(BrokerError::UserExists(name.clone()));
        }
        tx.insert_user(name, groups, service, None, now).await?;
        let issued = Self::issue_api_token(&mut tx, name, &Scopes::All, None, now).await?;
        let details = json!({ "user": name, "groups": groups, "service": service, "token": issued.token.id });
        tx.append(vec![AuditEvent { kind: EventKind::UserAdded, actor: actor.to_owned(), at: now, details }]).await?;
        tx.commit().await?;
        Ok(issued.secret)
    }

    /// Makes another API token for `user`, with `scopes` and, when given, an end.
    pub async fn create_token(
        &self,
        user: &UserName,
        scopes: &Scopes,
        expires_at: Option<OffsetDateTime>,
        actor: &str,
    ) -> Result<IssuedToken, BrokerError> {
        let now = self.clock().now();
        if expires_at.is_some_and(|end| end <= now) {
            return Err(BrokerError::TokenExpiryPast);
        }
        let mut tx = self.store().begin().await?;
        Self::enabled_user(&mut tx, user).await?;
        let issued = Self::issue_api_token(&mut tx, user, scopes, expires_at, now).await?;
        tx.append(vec![token_event(EventKind::TokenCreated, actor, now, &issued.token, None)]).await?;
        tx.commit().await?;
        Ok(issued)
    }

    /// Replaces API token `id` by a new one with the same user and scopes, and as long a life
    /// as the old one was given. The old token stops working in the same commit.
    pub async fn rotate_token(&self, id: TokenId, actor: &str) -> Result<IssuedToken, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let old = Self::live_api_token(&mut tx, id, now).await?;
        Self::enabled_user(&mut tx, &old.user).await?;
        let expires_at = old.expires_at.map(|end| now + (end - old.created_at));
        let issued = Self::issue_api_token(&mut tx, &old.user, &old.scopes, expires_at, now).await?;
        tx.end_token(old.id, now, "rotated").await?;
        tx.append(vec![token_event(EventKind::TokenRotated, actor, now, &issued.token, Some(old.id))]).await?;
        tx.commit().await?;
        Ok(issued)
    }

    /// Ends API token `id` at once.
    pub async fn revoke_token(&self, id: TokenId, actor: &str) -> Result<Token, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let token = Self::live_api_token(&mut tx, id, now).await?;
        tx.end_token(token.id, now, "revoked").await?;
        tx.append(vec![token_event(EventKind::TokenRevoked, actor, now, &token, None)]).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Every token `user` was given, newest first, ended ones included.
    pub async fn tokens_of(&self, user: &UserName) -> Result<Vec<Token>, BrokerError> {
        Ok(self.store().tokens_of(user).await?)
    }

    /// Disables a user and ends, at once, all their pending requests, live grants, API tokens
    /// and logins.
    pub async fn disable_user(&self, name: &UserName, actor: &str) -> Result<Ended, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        if tx.user(name).await?.is_none() {
            return Err(BrokerError::UserNotFound(name.clone()));
        }
        tx.disable_user(name).await?;
        let reason = "user disabled";
        let mut events = vec![AuditEvent {
            kind: EventKind::UserDisabled,
            actor: actor.to_owned(),
            at: now,
            details: json!({ "user": name }),
        }];
        let requests = tx.pending_requests_of(name).await?;
        let grants = tx.active_grants_of(name).await?;
        let (mut done, ended) = Self::end_access(&mut tx, requests, grants, actor, reason, now).await?;
        events.extend(ended);
        for token in tx.live_tokens_of(name).await? {
            events.push(Self::end_token(&mut tx, &token, actor, reason, now).await?);
            done.tokens_ended += 1;
        }
        tx.append(events).await?;
        tx.commit().await?;
        self.grants_changed();
        Ok(done)
    }

    /// Ends `token` (an API token or a login) in `tx`, returning its audit event.
    pub(crate) async fn end_token(
        tx: &mut Tx,
        token: &Token,
        actor: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<AuditEvent, BrokerError> {
        tx.end_token(token.id, now, reason).await?;
        let kind = match token.kind {
            TokenKind::Api => EventKind::TokenRevoked,
            TokenKind::Login => EventKind::LoginEnded,
        };
        let mut event = token_event(kind, actor, now, token, None);
        event.details["reason"] = json!(reason);
        Ok(event)
    }

    pub(crate) async fn enabled_user(tx: &mut Tx, user: &UserName) -> Result<(), BrokerError> {
        match tx.user(user).await? {
            Some(found) if !found.disabled => Ok(()),
            Some(_) => Err(BrokerError::UserDisabled(user.clone())),
            None => Err(BrokerError::UserNotFound(user.clone())),
        }
    }

    /// API token `id`, if it still works: logins end by logout, not by an administrator's
    /// token commands (disable the user to end those).
    async fn live_api_token(tx: &mut Tx, id: TokenId, now: OffsetDateTime) -> Result<Token, BrokerError> {
        match tx.token(id).await? {
            // An API token is never idle: `lapsed` looks at idleness for logins only.
            Some(token) if token.kind == TokenKind::Api && !lapsed(&token, now, Duration::ZERO) => Ok(token),
            Some(token) if token.kind == TokenKind::Api => Err(BrokerError::TokenEnded(id.to_string())),
            _ => Err(BrokerError::TokenNotFound(id.to_string())),
        }
    }

    /// Makes and stores an API token in `tx`.
    async fn issue_api_token(
        tx: &mut Tx,
        user: &UserName,
        scopes: &Scopes,
        expires_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, BrokerError> {
        let secret = secrets::new_token()?;
        let token = Token {
            id: TokenId::from_uuid(new_id()),
            user: user.clone(),
            kind: TokenKind::Api,
            scopes: scopes.clone(),
            created_at: now,
            expires_at,
            access_expires_at: None,
            last_used_at: now,
            ended_at: None,
            ended_reason: None,
            mfa_at: None,
        };
        tx.insert_token(&NewToken {
            id: token.id,
            user,
            kind: TokenKind::Api,
            hash: &secrets::token_hash(&secret),
            scopes,
            now,
            expires_at,
            access_expires_at: None,
            refresh_hash: None,
            idp_refresh: None,
        })
        .await?;
        Ok(IssuedToken { token, secret })
    }
}

/// The audit record of something done to `token` (never its secret).
pub(crate) fn token_event(
    kind: EventKind,
    actor: &str,
    at: OffsetDateTime,
    token: &Token,
    replaces: Option<TokenId>,
) -> AuditEvent {
    let mut details = json!({
        "token": token.id, "user": token.user, "kind": token.kind.as_str(), "scopes": token.scopes,
        "expires_at": token.expires_at,
    });
    if let Some(old) = replaces {
        details["replaces"] = json!(old);
    }
    AuditEvent { kind, actor: actor.to_owned(), at, details }
}
