//! `airlock credentials` and `airlock connect`: a gateway credential for one of the caller's live
//! grants, as a libpq connection string or as a `psql` session. The token travels to `psql` in
//! its environment (`PGPASSWORD`), never on a command line that `ps` would show. A credential
//! bound to this machine's device comes with the device's certificate and key (`sslcert`,
//! `sslkey`), which prove the binding to the gateway.

use std::path::PathBuf;
use std::process::Stdio;

use airlock_http::api::{CredentialView, GrantView};
use anyhow::{Context, anyhow};

use crate::cli::Remote;
use crate::client::Client;
use crate::{Failure, Outcome, output};

/// Where a credential is used, and as whom.
struct Connection {
    host: String,
    port: String,
    database: String,
    user: String,
    /// The device's certificate and key, for a credential bound to this machine's device.
    device_files: Option<(PathBuf, PathBuf)>,
}

impl Connection {
    fn of(credential: &CredentialView, client: &Client) -> Result<Self, Failure> {
        let gateway = credential.gateway.as_deref().ok_or_else(|| {
            anyhow!("the broker runs no gateway (no [gateway] section); use the token as the password at your gateway")
        })?;
        let (host, port) =
            gateway.rsplit_once(':').ok_or_else(|| anyhow!("the gateway address `{gateway}` has no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let database = credential.database.clone().unwrap_or_else(|| credential.resource.clone());
        let device_files = device_files(credential, client)?;
        Ok(Self { host: host.to_owned(), port: port.to_owned(), database, user: credential.user.clone(), device_files })
    }

    /// A libpq keyword/value string, without the password.
    fn keywords(&self) -> String {
        let mut keywords = format!(
            "host={} port={} dbname={} user={} sslmode=require",
            quote(&self.host),
            quote(&self.port),
            quote(&self.database),
            quote(&self.user)
        );
        if let Some((certificate, key)) = &self.device_files {
            let path = |p: &PathBuf| quote(&p.to_string_lossy());
            keywords.push_str(&format!(" sslcert={} sslkey={}", path(certificate), path(key)));
        }
        keywords
    }
}

/// For a credential bound to this machine's device: a certificate for its key, written now, and
/// the key's file (libpq's `sslcert` and `sslkey`).
fn device_files(credential: &CredentialView, client: &Client) -> Result<Option<(PathBuf, PathBuf)>, Failure> {
    let Some(key) = &credential.device_key else { return Ok(None) };
    let device = client
        .device()
        .filter(|device| device.holds(key))
        .ok_or_else(|| anyhow!("the credential is bound to a device key this machine does not hold"))?;
    let certificate = device.certificate(credential.expires_at)?;
    Ok(Some((certificate, device.key_path().to_owned())))
}

/// A libpq keyword value, quoted when it needs to be.
fn quote(value: &str) -> String {
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c)) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

async fn issue(client: &Client, grant_id: &str) -> Result<CredentialView, Failure> {
    client.post(&format!("/v1/grants/{grant_id}/credentials"), &serde_json::json!({})).await
}

/// `airlock credentials GRANT_ID`: the connection string with the token, on standard output.
pub async fn credentials(remote: &Remote, grant_id: &str) -> Outcome {
    let grant_id = crate::remote::id(grant_id)?;
    let client = Client::new(remote)?;
    let credential = issue(&client, &grant_id).await?;
    if remote.json {
        let mut document = serde_json::to_value(&credential).context("cannot write the credential")?;
        if let Some((certificate, key)) = device_files(&credential, &client)? {
            document["sslcert"] = serde_json::json!(certificate);
            document["sslkey"] = serde_json::json!(key);
        }
        output::json(&document);
        return Ok(());
    }
    let connection = Connection::of(&credential, &client)?;
    eprintln!(
        "credential for grant {} ({} on {}), valid until {}; it is a password: keep it secret",
        credential.grant, credential.role, credential.resource, credential.expires_at
    );
    println!("{} password={}", connection.keywords(), credential.token);
    Ok(())
}

/// `airlock connect RESOURCE [--role ROLE] [-- PSQL-ARGS]`: `psql` through the gateway under
/// the caller's live grant on `resource`.
pub async fn connect(remote: &Remote, resource: &str, role: Option<&str>, psql: &str, args: &[String]) -> Outcome {
    let client = Client::new(remote)?;
    let grants: Vec<GrantView> = client.get("/v1/grants?active=true&mine=true").await?;
    let mut matching: Vec<&GrantView> =
        grants.iter().filter(|g| g.resource == resource && role.is_none_or(|role| g.role == role)).collect();
    matching.sort_by_key(|g| std::cmp::Reverse(g.expires_at));
    let grant = match (matching.as_slice(), role) {
        ([], _) => {
            let role = role.map(|r| format!(" as `{r}`")).unwrap_or_default();
            return Err(Failure::Refused(format!(
                "you have no live grant on `{resource}`{role}; ask for one with `airlock request {resource} --role … --for … --reason …`"
            )));
        }
        ([first, ..], Some(_)) => first,
        ([only], None) => only,
        (several, None) => {
            let mut roles: Vec<&str> = several.iter().map(|g| g.role.as_str()).collect();
            roles.dedup();
            if roles.len() > 1 {
                return Err(anyhow!(
                    "you hold several roles on `{resource}` ({}); choose one with --role",
                    roles.join(", ")
                )
                .into());
            }
            several[0]
        }
    };
    let credential = issue(&client, &grant.id.to_string()).await?;
    let connection = Connection::of(&credential, &client)?;
    eprintln!(
        "connecting to `{}` as `{}` (grant {}, until {})",
        credential.resource, credential.role, credential.grant, credential.expires_at
    );
    let status = tokio::process::Command::new(psql)
        .arg(connection.keywords())
        .args(args)
        .env("PGPASSWORD", &credential.token)
        .env_remove("PGSERVICE")
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .await
        .with_context(|| format!("cannot run `{psql}` (set --psql or AIRLOCK_PSQL to its path)"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(Failure::Refused(format!("psql exited with status {code}"))),
        None => Err(Failure::Refused("psql was ended by a signal".to_owned())),
    }
}
