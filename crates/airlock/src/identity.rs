//! API tokens and the second factor. `airlock admin token …` works on the data directory, like
//! the other administration; `airlock mfa …` and `--otp` ask the broker, for the caller.

use airlock_broker::identity::lapsed;
use airlock_core::ids::{TokenId, UserName};
use airlock_core::scope::Scopes;
use airlock_http::api::{CodeBody, EnrollmentView, MfaView};
use airlock_store::{Token, TokenKind};
use anyhow::anyhow;
use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;

use crate::cli::{MfaCommand, Remote, TokenCommand};
use crate::client::Client;
use crate::local::{admin_actor, open_broker, refused_or_usage};
use crate::{Failure, Outcome, output};

fn user_name(text: &str) -> Result<UserName, Failure> {
    UserName::parse(text).map_err(|e| anyhow!("{e}").into())
}

pub async fn token(files: &crate::cli::Files, command: TokenCommand) -> Outcome {
    let (broker, _) = open_broker(files).await?;
    match command {
        TokenCommand::Create { user, scopes, expires } => {
            let user = user_name(&user)?;
            let scopes = Scopes::parse(scopes.iter().map(String::as_str)).map_err(|e| anyhow!("--scope: {e}"))?;
            let expires_at = expires
                .map(|text| {
                    let lasts = humantime::parse_duration(&text).map_err(|e| anyhow!("--expires: {e}"))?;
                    let lasts = time::Duration::try_from(lasts).map_err(|e| anyhow!("--expires: {e}"))?;
                    Ok::<_, anyhow::Error>(broker.clock().now() + lasts)
                })
                .transpose()?;
            let issued =
                broker.create_token(&user, &scopes, expires_at, &admin_actor()).await.map_err(refused_or_usage)?;
            eprintln!("{}; the token follows, shown only this once:", describe(&issued.token));
            println!("{}", issued.secret);
        }
        TokenCommand::Rotate { token } => {
            let id = token_named(&broker, &token).await?;
            let issued = broker.rotate_token(id, &admin_actor()).await.map_err(refused_or_usage)?;
            eprintln!(
                "token {id} no longer works; {}; the new token follows, shown only this once:",
                describe(&issued.token)
            );
            println!("{}", issued.secret);
        }
        TokenCommand::Revoke { token } => {
            let id = token_named(&broker, &token).await?;
            let revoked = broker.revoke_token(id, &admin_actor()).await.map_err(refused_or_usage)?;
            println!("revoked token {} of `{}`", revoked.id, revoked.user);
        }
        TokenCommand::List { user, json } => {
            let tokens = broker.tokens_of(&user_name(&user)?).await.map_err(refused_or_usage)?;
            if json {
                output::json(&tokens.iter().map(token_json).collect::<Vec<_>>());
            } else {
                let mut table = output::table(&["id", "kind", "scopes", "created", "expires", "last used", "ended"]);
                for token in &tokens {
                    table.add_row([
                        token.id.to_string(),
                        token.kind.as_str().to_owned(),
                        token.scopes.to_string(),
                        output::when(token.created_at),
                        token.expires_at.map_or_else(|| "never".into(), output::when),
                        output::when(token.last_used_at),
                        ended(token),
                    ]);
                }
                println!("{table}");
            }
        }
    }
    Ok(())
}

pub async fn reset_mfa(files: &crate::cli::Files, name: &str) -> Outcome {
    let user = user_name(name)?;
    let (broker, _) = open_broker(files).await?;
    broker.reset_mfa(&user, &admin_actor()).await.map_err(refused_or_usage)?;
    println!("removed the authenticator of `{user}`: they enroll again with `airlock mfa enroll`");
    Ok(())
}

/// A token id as typed, or the name of a user holding exactly one live API token.
async fn token_named(broker: &airlock_broker::Broker, text: &str) -> Result<TokenId, Failure> {
    if let Ok(id) = text.parse::<TokenId>() {
        return Ok(id);
    }
    let user = UserName::parse(text).map_err(|_| anyhow!("`{text}` is neither a token id nor a user name"))?;
    let now = broker.clock().now();
    let live: Vec<Token> = broker
        .tokens_of(&user)
        .await
        .map_err(refused_or_usage)?
        .into_iter()
        .filter(|t| t.kind == TokenKind::Api && !lapsed(t, now, time::Duration::ZERO))
        .collect();
    match live.as_slice() {
        [one] => Ok(one.id),
        [] => Err(Failure::Refused(format!("`{user}` holds no live API token"))),
        _ => Err(anyhow!(
            "`{user}` holds {} live API tokens: name one by id (`airlock admin token list {user}`)",
            live.len()
        )
        .into()),
    }
}

fn describe(token: &Token) -> String {
    let expiry =
        token.expires_at.map_or_else(|| "no expiry".to_owned(), |end| format!("expires {}", output::when(end)));
    format!("token {} of `{}` (scopes {}, {expiry})", token.id, token.user, token.scopes)
}

fn ended(token: &Token) -> String {
    match (token.ended_at, &token.ended_reason) {
        (Some(at), Some(reason)) => format!("{} ({reason})", output::when(at)),
        (Some(at), None) => output::when(at),
        (None, _) => String::new(),
    }
}

fn token_json(token: &Token) -> serde_json::Value {
    serde_json::json!({
        "id": token.id, "user": token.user, "kind": token.kind.as_str(), "scopes": token.scopes,
        "created_at": output::when(token.created_at), "expires_at": token.expires_at.map(output::when),
        "last_used_at": output::when(token.last_used_at), "ended_at": token.ended_at.map(output::when),
        "ended_reason": token.ended_reason,
    })
}

pub async fn mfa(command: MfaCommand) -> Outcome {
    match command {
        MfaCommand::Enroll { remote } => {
            let enrollment: EnrollmentView =
                Client::new(&remote)?.post("/v1/mfa/enroll", &serde_json::json!({})).await?;
            if remote.json {
                output::json(&enrollment);
                return Ok(());
            }
            let code = QrCode::new(enrollment.otpauth_uri.as_bytes()).map_err(|e| anyhow!("QR code: {e}"))?;
            println!("{}", code.render::<Dense1x2>().quiet_zone(true).build());
            println!("{}", enrollment.otpauth_uri);
            eprintln!(
                "scan the code (or add the URI) in an authenticator app; it is shown only this once.\nthen confirm with the code the app shows: airlock mfa confirm CODE"
            );
        }
        MfaCommand::Confirm { code, remote } => {
            let proved = prove(&remote, "/v1/mfa/confirm", code).await?;
            report(&remote, &proved, "enrolled");
        }
        MfaCommand::Verify { code, remote } => {
            let proved = prove(&remote, "/v1/mfa/verify", code).await?;
            report(&remote, &proved, "second factor proved");
        }
    }
    Ok(())
}

/// Proves `code` for the caller's token before a command that needs a fresh second factor.
pub async fn step_up(remote: &Remote, code: Option<String>) -> Outcome {
    if let Some(code) = code {
        prove(remote, "/v1/mfa/verify", code).await?;
    }
    Ok(())
}

async fn prove(remote: &Remote, path: &str, code: String) -> Result<MfaView, Failure> {
    let code = code.trim().to_owned();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(anyhow!("a code is the six digits the authenticator app shows").into());
    }
    Client::new(remote)?.post(path, &CodeBody { code }).await
}

fn report(remote: &Remote, proved: &MfaView, what: &str) {
    if remote.json {
        output::json(proved);
    } else {
        println!("{what}; fresh until {}", output::when(proved.fresh_until));
    }
}
