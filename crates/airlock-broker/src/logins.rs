//! Broker sessions ("logins"): what signing in through the identity provider gives.
//!
//! A login holds a short-lived access token (the bearer for API calls, `[identity] access_ttl`)
//! and a refresh token that makes the next pair. Each refresh token works once: presenting one
//! already exchanged means somebody copied it, and ends the login. A login ends at logout, when
//! unused for `session_idle`, `session_max` after it began, and when its user is disabled. Users
//! signed in for the first time are provisioned; their groups follow the identity provider at
//! every sign-in and refresh.

use std::net::IpAddr;

use airlock_core::audit::{AuditEvent, EventKind, SYSTEM_ACTOR};
use airlock_core::ids::{GroupName, TokenId, UserName};
use airlock_core::scope::Scopes;
use airlock_store::{NewToken, RefreshLookup, Renewal, Token, TokenKind, Tx};
use serde_json::json;
use time::OffsetDateTime;

use crate::broker::{Broker, BrokerError, Caller, new_id};
use crate::identity::lapsed;
use crate::secrets;

/// The reason recorded on grants revoked because their holder's groups changed.
pub const GROUPS_CHANGED: &str = "groups changed at the identity provider";

/// Who the identity provider says signed in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The provider's stable id for the person.
    pub subject: String,
    pub name: UserName,
    pub groups: Vec<GroupName>,
    /// The provider's refresh token, kept sealed so that refreshes re-read the groups.
    pub idp_refresh: Option<String>,
}

/// What a client keeps of its login. The tokens are shown once and stored only as hashes.
#[derive(Debug, Clone)]
pub struct LoginTokens {
    pub login: TokenId,
    pub user: UserName,
    pub access_token: String,
    pub refresh_token: String,
    pub access_expires_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Why an identity provider's answer could not become a login.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error(
        "`{0}` is a local user or service account here; single sign-on may not take over an account it did not make"
    )]
    LocalAccount(UserName),
    #[error("`{0}` already belongs to another person of the identity provider")]
    NameTaken(UserName),
}

impl Broker {
    /// Begins a login for a person the identity provider vouched for: provisions them at their
    /// first sign-in, sets their groups to the provider's, and returns the login's tokens.
    pub async fn sign_in(&self, who: SignedIn, source_ip: IpAddr) -> Result<LoginTokens, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let mut events = Vec::new();
        let name = match tx.user_by_subject(&who.subject).await? {
            Some(user) if user.disabled => return Err(BrokerError::UserDisabled(user.name)),
            Some(user) => {
                events.extend(self.follow_groups(&mut tx, &user.name, &user.groups, &who.groups, now).await?);
                user.name
            }
            None => {
                if let Some(existing) = tx.user(&who.name).await? {
                    return Err(match tx.subject_of(&existing.name).await? {
                        None => SignInError::LocalAccount(existing.name),
                        Some(_) => SignInError::NameTaken(existing.name),
                    }
                    .into());
                }
                tx.insert_user(&who.name, &who.groups, false, Some(&who.subject), now).await?;
                events.push(AuditEvent {
                    kind: EventKind::UserAdded,
                    actor: SYSTEM_ACTOR.to_owned(),
                    at: now,
                    details: json!({
                        "user": who.name, "groups": who.groups, "service": false, "source": "oidc",
                        "subject": who.subject,
                    }),
                });
                who.name
            }
        };
        let tokens = self.new_login_tokens(&name, now)?;
        let idp_refresh = self.seal_idp_refresh(tokens.login, who.idp_refresh)?;
        tx.insert_token(&NewToken {
            id: tokens.login,
            user: &name,
            kind: TokenKind::Login,
            hash: &secrets::token_hash(&tokens.access_token),
            scopes: &Scopes::All,
            now,
            expires_at: Some(tokens.expires_at),
            access_expires_at: Some(tokens.access_expires_at),
            refresh_hash: Some(&secrets::token_hash(&tokens.refresh_token)),
            idp_refresh: idp_refresh.as_deref(),
        })
        .await?;
        events.push(AuditEvent {
            kind: EventKind::LoginStarted,
            actor: name.to_string(),
            at: now,
            details: json!({
                "login": tokens.login, "user": name, "source_ip": source_ip.to_string(),
                "expires_at": tokens.expires_at,
            }),
        });
        self.commit_telling_gateways(tx, events).await?;
        Ok(tokens)
    }

    /// Exchanges a login's refresh token for the next pair. `renewed_by_idp` asks the identity
    /// provider again (with the sealed refresh token it gave) and returns who it now says the
    /// person is; its refusal ends the login and is returned as it is. A login the provider
    /// gave no refresh token keeps its groups. A refresh token already exchanged ends the login.
    pub async fn refresh_login<F, Fut, E>(&self, refresh_token: &str, renewed_by_idp: F) -> Result<LoginTokens, E>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<SignedIn, E>>,
        E: From<BrokerError>,
    {
        let hash = secrets::token_hash(refresh_token);
        let (login, idp_refresh) = self.login_to_renew(&hash).await?;
        // Ask the identity provider outside any transaction: it is a network call.
        let renewed = match idp_refresh {
            Some(idp_refresh) => match renewed_by_idp(idp_refresh).await {
                Ok(renewed) => Some(renewed),
                Err(refused) => {
                    let mut tx = self.store().begin().await.map_err(BrokerError::from)?;
                    if let Some(current) = tx.token(login.id).await.map_err(BrokerError::from)? {
                        self.end_login(tx, &current, SYSTEM_ACTOR, "the identity provider refused to renew it").await?;
                    }
                    return Err(refused);
                }
            },
            None => None,
        };
        Ok(self.renew_login(&hash, login.id, renewed).await?)
    }

    /// The login whose current refresh token hashes to `hash`, if it may be renewed, with the
    /// identity provider's refresh token it keeps (opened). A refresh token already exchanged
    /// ends its login.
    async fn login_to_renew(&self, hash: &str) -> Result<(Token, Option<String>), BrokerError> {
        let mut tx = self.store().begin().await?;
        let (login, sealed) = match tx.refresh_lookup(hash).await? {
            RefreshLookup::Current(login, sealed) => (login, sealed),
            RefreshLookup::Reused(login) => {
                self.end_login(tx, &login, SYSTEM_ACTOR, "refresh token reused").await?;
                return Err(BrokerError::RefreshRefused);
            }
            RefreshLookup::Unknown => return Err(BrokerError::RefreshRefused),
        };
        if !self.login_may_renew(&login, self.clock().now()) {
            return Err(BrokerError::RefreshRefused);
        }
        let idp_refresh = sealed
            .map(|sealed| {
                let opened = self.key().unseal(&sealing_context(login.id), &sealed)?;
                String::from_utf8(opened).map_err(|_| secrets::SecretError::Sealed)
            })
            .transpose()?;
        Ok((login, idp_refresh))
    }

    /// Gives login `id` its next pair, if `hash` is still its current refresh token (a racing
    /// refresh loses), following the groups the provider `renewed` gave.
    async fn renew_login(
        &self,
        hash: &str,
        id: TokenId,
        renewed: Option<SignedIn>,
    ) -> Result<LoginTokens, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let current = match tx.refresh_lookup(hash).await? {
            RefreshLookup::Current(current, _) if current.id == id && self.login_may_renew(&current, now) => current,
            _ => return Err(BrokerError::RefreshRefused),
        };
        let Some(user) = tx.user(&current.user).await?.filter(|u| !u.disabled) else {
            return Err(BrokerError::RefreshRefused);
        };
        let mut events = Vec::new();
        let mut idp_refresh = None;
        if let Some(renewed) = renewed {
            events.extend(self.follow_groups(&mut tx, &user.name, &user.groups, &renewed.groups, now).await?);
            idp_refresh = self.seal_idp_refresh(current.id, renewed.idp_refresh)?;
        }
        let mut tokens = self.new_login_tokens(&user.name, now)?;
        tokens.login = current.id;
        tokens.expires_at = current.expires_at.unwrap_or(tokens.expires_at);
        tokens.access_expires_at = tokens.access_expires_at.min(tokens.expires_at);
        tx.renew_login(
            current.id,
            &Renewal {
                hash: &secrets::token_hash(&tokens.access_token),
                access_expires_at: tokens.access_expires_at,
                refresh_hash: &secrets::token_hash(&tokens.refresh_token),
                used_refresh_hash: hash,
                idp_refresh: idp_refresh.as_deref(),
                now,
            },
        )
        .await?;
        self.commit_telling_gateways(tx, events).await?;
        Ok(tokens)
    }

    /// Appends `events` and commits; when they revoke grants (groups that changed), tells the
    /// grant watchers, so gateways cut those sessions at once.
    async fn commit_telling_gateways(&self, mut tx: Tx, events: Vec<AuditEvent>) -> Result<(), BrokerError> {
        let revoked = events.iter().any(|e| e.kind == EventKind::GrantRevoked);
        tx.append(events).await?;
        tx.commit().await?;
        if revoked {
            self.grants_changed();
        }
        Ok(())
    }

    /// Sets `user`'s groups to what the identity provider says and, when they changed, revokes
    /// the live grants the policies would no longer give them (reason [`GROUPS_CHANGED`]):
    /// somebody who left the on-call group keeps nothing it gave. Returns the audit records.
    async fn follow_groups(
        &self,
        tx: &mut Tx,
        user: &UserName,
        before: &[GroupName],
        after: &[GroupName],
        now: OffsetDateTime,
    ) -> Result<Vec<AuditEvent>, BrokerError> {
        let Some(changed) = groups_change(tx, user, before, after, now).await? else { return Ok(Vec::new()) };
        let mut events = vec![changed];
        events.extend(self.revoke_refused_grants_of(tx, user, GROUPS_CHANGED, now).await?);
        Ok(events)
    }

    /// Ends the caller's login.
    pub async fn logout(&self, caller: &Caller) -> Result<(), BrokerError> {
        let id = caller.token.ok_or(BrokerError::NotALogin)?;
        let mut tx = self.store().begin().await?;
        let login = tx.token(id).await?.ok_or_else(|| BrokerError::TokenNotFound(id.to_string()))?;
        if login.kind != TokenKind::Login {
            return Err(BrokerError::NotALogin);
        }
        self.end_login(tx, &login, caller.principal.name.as_str(), "logout").await
    }

    /// Ends, on the record, every login past its end or unused for `session_idle` (the scheduler
    /// runs this; authentication refuses them already). Returns how many it ended.
    pub async fn end_lapsed_logins(&self) -> Result<usize, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let lapsed = tx.lapsed_logins(now, now - self.settings.identity.session_idle.as_time()).await?;
        if lapsed.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(lapsed.len());
        for login in &lapsed {
            let reason = if login.expires_at.is_some_and(|end| end <= now) { "expired" } else { "idle" };
            events.push(Self::end_token(&mut tx, login, SYSTEM_ACTOR, reason, now).await?);
        }
        tx.append(events).await?;
        tx.commit().await?;
        Ok(lapsed.len())
    }

    /// Ends `login`, as read in `tx`, and commits; a login already ended is left as it is.
    async fn end_login(&self, mut tx: Tx, login: &Token, actor: &str, reason: &str) -> Result<(), BrokerError> {
        if login.ended_at.is_none() {
            let event = Self::end_token(&mut tx, login, actor, reason, self.clock().now()).await?;
            tx.append(vec![event]).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// A login may be renewed while it has not lapsed (its access token may have).
    fn login_may_renew(&self, login: &Token, now: OffsetDateTime) -> bool {
        login.kind == TokenKind::Login && !lapsed(login, now, self.settings.identity.session_idle.as_time())
    }

    fn seal_idp_refresh(&self, login: TokenId, token: Option<String>) -> Result<Option<String>, BrokerError> {
        Ok(token.map(|token| self.key().seal(&sealing_context(login), token.as_bytes())).transpose()?)
    }

    fn new_login_tokens(&self, user: &UserName, now: OffsetDateTime) -> Result<LoginTokens, BrokerError> {
        let identity = &self.settings.identity;
        let expires_at = now + identity.session_max.as_time();
        Ok(LoginTokens {
            login: TokenId::from_uuid(new_id()),
            user: user.clone(),
            access_token: secrets::new_token()?,
            refresh_token: secrets::new_token()?,
            access_expires_at: (now + identity.access_ttl.as_time()).min(expires_at),
            expires_at,
        })
    }
}

/// What an identity provider's refresh token is sealed to: its login (it opens for no other).
fn sealing_context(login: TokenId) -> String {
    format!("identity provider refresh token of login {login}")
}

/// Sets `user`'s groups to what the identity provider says, returning the audit record of a
/// change (none when they are the same).
async fn groups_change(
    tx: &mut Tx,
    user: &UserName,
    before: &[GroupName],
    after: &[GroupName],
    now: OffsetDateTime,
) -> Result<Option<AuditEvent>, BrokerError> {
    let mut sorted_before = before.to_vec();
    let mut sorted_after = after.to_vec();
    sorted_before.sort();
    sorted_after.sort();
    sorted_after.dedup();
    if sorted_before == sorted_after {
        return Ok(None);
    }
    tx.set_user_groups(user, &sorted_after).await?;
    Ok(Some(AuditEvent {
        kind: EventKind::UserGroupsChanged,
        actor: SYSTEM_ACTOR.to_owned(),
        at: now,
        details: json!({ "user": user, "before": sorted_before, "after": sorted_after, "source": "oidc" }),
    }))
}
