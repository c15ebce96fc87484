//! `airlock audit`: the tail of the chain, its verification by the broker or offline from an
//! export file, exports, and the public key that verifies them.
//!
//! Offline verification needs no broker and no database: the export file, the broker's public
//! key (from `airlock audit key`, kept somewhere the broker's host cannot change), and
//! optionally the checkpoints a sink copied elsewhere.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use airlock_core::audit::checkpoint::Checkpoint;
use airlock_core::audit::export::{Line, Report, Verifier};
use airlock_http::api::{AuditRecordView, KeyView, ProveBody, ProveView, VerifyView};
use anyhow::{Context, anyhow};
use serde::Serialize;
use time::OffsetDateTime;

use crate::cli::Remote;
use crate::client::{Client, time_query};
use crate::{Failure, Outcome, output};

pub async fn tail(remote: &Remote, n: u32) -> Outcome {
    let records: Vec<AuditRecordView> = Client::new(remote)?.get(&format!("/v1/audit?n={n}")).await?;
    if remote.json {
        output::json(&records)
    } else {
        output::audit(&records)
    }
    Ok(())
}

/// Asks the broker to check its chain and stored checkpoints.
pub async fn verify_remote(remote: &Remote) -> Outcome {
    let check: VerifyView = Client::new(remote)?.get("/v1/audit/verify").await?;
    if remote.json {
        output::json(&check);
    } else if check.intact {
        let head = check.head_hash.as_deref().unwrap_or("(empty)");
        println!(
            "audit chain intact: {} records, {} checkpoints checked, head {head}",
            check.records, check.checkpoints
        );
    } else {
        problems(&check.problems, check.problems.len() as u64);
    }
    if check.intact {
        Ok(())
    } else {
        let first = check.error.unwrap_or_else(|| "unknown problem".into());
        Err(Failure::Refused(format!("audit chain broken: {first}")))
    }
}

fn problems(problems: &[String], total: u64) {
    for problem in problems {
        println!("{problem}");
    }
    if total > problems.len() as u64 {
        println!("… and {} more problems", total - problems.len() as u64);
    }
}

/// What offline verification found, for `--json`.
#[derive(Debug, Serialize)]
struct FileCheck {
    intact: bool,
    records: i64,
    first_seq: Option<i64>,
    last_seq: Option<i64>,
    head_hash: Option<String>,
    checkpoints: u64,
    sink_checkpoints: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    sealed_at: Option<OffsetDateTime>,
    problems: Vec<String>,
    more_problems: u64,
}

/// Checks an export file offline: hashes, links, signatures, checkpoints, the seal, the sink.
pub fn verify_file(file: &Path, public_key: &str, sink: Option<&Path>, json: bool) -> Outcome {
    let public_key = read_public_key(public_key)?;
    let sink = sink.map(read_sink).transpose()?.unwrap_or_default();
    let reader = BufReader::with_capacity(1 << 20, open(file)?);
    let report = verify_lines(reader, public_key, sink).with_context(|| format!("cannot read `{}`", file.display()))?;
    let total = report.failures.len() as u64 + report.more_failures;
    let check = FileCheck {
        intact: report.intact(),
        records: report.records,
        first_seq: report.first_seq,
        last_seq: report.head.as_ref().map(|h| h.seq),
        head_hash: report.head.as_ref().map(|h| h.hash.clone()),
        checkpoints: report.checkpoints,
        sink_checkpoints: report.sink_checkpoints,
        sealed_at: report.sealed_at_ms.and_then(|ms| OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok()),
        problems: report.failures.iter().map(ToString::to_string).collect(),
        more_problems: report.more_failures,
    };
    if json {
        output::json(&check);
    } else if check.intact {
        let span = match (check.first_seq, check.last_seq) {
            (Some(first), Some(last)) => format!("records {first}..={last}"),
            _ => "no records".into(),
        };
        println!(
            "export intact: {span} ({} records), {} checkpoints and {} sink checkpoints checked, sealed; head {}",
            check.records,
            check.checkpoints,
            check.sink_checkpoints,
            check.head_hash.as_deref().unwrap_or("(none)")
        );
    } else {
        problems(&check.problems, total);
    }
    if check.intact { Ok(()) } else { Err(Failure::Refused(format!("audit export broken: {total} problems"))) }
}

/// Feeds every line of an export to a verifier.
fn verify_lines(mut reader: impl BufRead, public_key: [u8; 32], sink: Vec<Checkpoint>) -> std::io::Result<Report> {
    let mut verifier = Verifier::new(public_key, sink);
    let mut line = String::new();
    let mut number = 0;
    while reader.read_line(&mut line)? > 0 {
        number += 1;
        verifier.line(number, line.trim_end_matches(['\n', '\r']));
        line.clear();
    }
    Ok(verifier.finish(true))
}

fn open(path: &Path) -> Result<File, Failure> {
    File::open(path).with_context(|| format!("cannot open `{}`", path.display())).map_err(Failure::from)
}

/// The key as 64 hex digits, or the path of a file holding them.
fn read_public_key(key: &str) -> Result<[u8; 32], Failure> {
    let text = if Path::new(key).is_file() {
        std::fs::read_to_string(key).with_context(|| format!("cannot read the public key file `{key}`"))?
    } else {
        key.to_owned()
    };
    let bytes = hex::decode(text.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
    bytes.ok_or_else(|| {
        anyhow!("--public-key must be the broker's Ed25519 public key (64 hex digits, see `airlock audit key`) or a file holding it").into()
    })
}

/// The checkpoints a file sink kept: one checkpoint line each.
fn read_sink(path: &Path) -> Result<Vec<Checkpoint>, Failure> {
    let reader = BufReader::new(open(path)?);
    let mut checkpoints = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read `{}`", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line<'_>>(&line) {
            Ok(Line::Checkpoint(checkpoint)) => checkpoints.push(checkpoint),
            _ => {
                let message = format!("`{}` line {}: not a checkpoint line", path.display(), number + 1);
                return Err(anyhow!(message).into());
            }
        }
    }
    Ok(checkpoints)
}

/// Writes an export to `out` (whole, or not at all) or to standard output.
pub async fn export(
    remote: &Remote,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    out: Option<&Path>,
) -> Outcome {
    let client = Client::new(remote)?;
    let path = format!("/v1/audit/export{}", time_query(since, until, &[])?);
    match out {
        None => {
            let mut stdout = std::io::stdout().lock();
            client.download(&path, &mut stdout).await?;
            stdout.flush().context("cannot write to standard output")?;
        }
        Some(out) => {
            let partial = PathBuf::from(format!("{}.partial", out.display()));
            let mut file = File::create(&partial).with_context(|| format!("cannot create `{}`", partial.display()))?;
            let downloaded = client.download(&path, &mut file).await;
            let synced = downloaded.and_then(|bytes| {
                file.sync_all().with_context(|| format!("cannot write `{}`", partial.display()))?;
                Ok(bytes)
            });
            match synced {
                Ok(bytes) => {
                    std::fs::rename(&partial, out).with_context(|| format!("cannot write `{}`", out.display()))?;
                    eprintln!("wrote {bytes} bytes to {}", out.display());
                }
                Err(failure) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(failure);
                }
            }
        }
    }
    Ok(())
}

/// Asks the broker whether `value` opens a redacted value's commitment.
pub async fn prove(remote: &Remote, commitment: &str, value: String) -> Outcome {
    let body = ProveBody { commitment: commitment.to_owned(), value };
    let proof: ProveView = Client::new(remote)?.post("/v1/audit/prove", &body).await?;
    if remote.json {
        output::json(&proof);
    } else if proof.matches {
        println!("matches: this is the value redacted as {commitment}");
    }
    if proof.matches { Ok(()) } else { Err(Failure::Refused(format!("not the value redacted as {commitment}"))) }
}

/// Prints the broker's public key, for `airlock audit verify --public-key`.
pub async fn key(remote: &Remote) -> Outcome {
    let key: KeyView = Client::new(remote)?.get("/v1/keys").await?;
    if remote.json {
        output::json(&key);
    } else {
        println!("{}", key.public_key);
        eprintln!("{} key {}: keep a copy where the broker's host cannot change it", key.algorithm, key.key_id);
    }
    Ok(())
}
