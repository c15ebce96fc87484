//! Every kind of tampering with an exported audit chain is caught offline, and named.

use airlock_core::audit::checkpoint::{Checkpoint, Seal, SealContents};
use airlock_core::audit::export::{Line, RecordLine, Report, Verifier};
use airlock_core::audit::{AuditEvent, ChainHead, ChainRecord, EventKind, chain};
use ed25519_dalek::SigningKey;
use serde_json::json;
use time::OffsetDateTime;

const T0: i64 = 1_800_000_000_000;

fn keypair(seed: u8) -> [u8; 64] {
    SigningKey::from_bytes(&[seed; 32]).to_keypair_bytes()
}

fn public(keypair: &[u8; 64]) -> [u8; 32] {
    keypair[32..].try_into().unwrap()
}

/// A chain of `n` records whose details say `tag`.
fn records(n: i64, tag: &str) -> Vec<ChainRecord> {
    let mut head = ChainHead::genesis();
    (1..=n)
        .map(|i| {
            let event = AuditEvent {
                kind: EventKind::StatementExecuted,
                actor: "alice".into(),
                at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(T0 + i) * 1_000_000).unwrap(),
                details: json!({"statement": format!("SELECT {i}"), "tag": tag, "quote": "it's \"x\""}),
            };
            let record = chain(&head, "broker", &event);
            head = ChainHead { seq: record.seq, hash: record.hash.clone() };
            record
        })
        .collect()
}

fn checkpoint(key: &[u8; 64], record: &ChainRecord) -> Checkpoint {
    Checkpoint::sign(key, "broker", record.seq, &record.hash, record.at_ms + 1).unwrap()
}

/// An export as the broker writes it: records, a checkpoint after every 4th, and the seal.
fn export(key: &[u8; 64], records: &[ChainRecord], to_head: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for record in records {
        lines.push(Line::Event(RecordLine::of(record)).to_json());
        if record.seq % 4 == 0 {
            lines.push(Line::Checkpoint(checkpoint(key, record)).to_json());
        }
    }
    lines.push(seal(key, records, to_head));
    lines
}

fn seal(key: &[u8; 64], records: &[ChainRecord], to_head: bool) -> String {
    let (first, last) = (records.first().unwrap(), records.last().unwrap());
    let contents = SealContents {
        chain_id: "broker",
        first_seq: first.seq,
        last_seq: last.seq,
        last_hash: &last.hash,
        records: records.len() as i64,
        to_head,
        at_ms: T0 + 10_000,
    };
    Line::Seal(Seal::sign(key, &contents).unwrap()).to_json()
}

fn verify_with(key: &[u8; 32], lines: &[String], sink: Vec<Checkpoint>) -> Report {
    let mut verifier = Verifier::new(*key, sink);
    for (i, line) in lines.iter().enumerate() {
        verifier.line(i as u64 + 1, line);
    }
    verifier.finish(true)
}

fn problems(report: &Report) -> Vec<String> {
    report.failures.iter().map(ToString::to_string).collect()
}

fn line_of(lines: &[String], seq: i64) -> usize {
    lines.iter().position(|l| l.starts_with(&format!("{{\"event\":{{\"seq\":{seq},"))).unwrap()
}

#[test]
fn an_untouched_export_verifies() {
    let key = keypair(1);
    let chain = records(10, "real");
    let report = verify_with(&public(&key), &export(&key, &chain, true), Vec::new());
    assert_eq!(problems(&report), Vec::<String>::new());
    assert_eq!(report.records, 10);
    assert_eq!(report.checkpoints, 2);
    assert_eq!(report.head.unwrap().hash, chain[9].hash);
}

#[test]
fn an_edited_record_is_named() {
    let key = keypair(1);
    let mut lines = export(&key, &records(10, "real"), true);
    let at = line_of(&lines, 3);
    lines[at] = lines[at].replace("SELECT 3", "SELECT 4");
    assert_eq!(
        problems(&verify_with(&public(&key), &lines, Vec::new())),
        [format!("line {}, record 3: its contents do not match its hash (edited)", at + 1)]
    );
}

#[test]
fn deleted_inserted_and_reordered_records_are_named() {
    let key = keypair(1);
    let lines = export(&key, &records(10, "real"), true);

    let mut deleted = lines.clone();
    deleted.remove(line_of(&lines, 6));
    let found = problems(&verify_with(&public(&key), &deleted, Vec::new()));
    assert!(found[0].contains("line 7, record 7: expected sequence number 6"), "{found:?}");
    assert!(found.iter().any(|p| p.contains("the seal vouches for records 1..=10 (10 records)")), "{found:?}");

    // Renumbering after a deletion does not help: the sequence number is hashed.
    let mut renumbered = records(10, "real");
    renumbered.remove(1);
    for (i, record) in renumbered.iter_mut().enumerate() {
        record.seq = i as i64 + 1;
    }
    let renumbered: Vec<String> = renumbered.iter().map(|r| Line::Event(RecordLine::of(r)).to_json()).collect();
    let mut verifier = Verifier::new(public(&key), Vec::new());
    for (i, line) in renumbered.iter().enumerate() {
        verifier.line(i as u64 + 1, line);
    }
    let found = problems(&verifier.finish(false));
    assert!(found[0].starts_with("line 2, record 2: it does not link to the record before it"), "{found:?}");
    assert_eq!(found[1], "line 2, record 2: its contents do not match its hash (edited)", "{found:?}");

    let mut inserted = lines.clone();
    let forged = chain(
        &ChainHead { seq: 2, hash: records(2, "real")[1].hash.clone() },
        "broker",
        &AuditEvent {
            kind: EventKind::GrantRevoked,
            actor: "mallory".into(),
            at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            details: json!({}),
        },
    );
    inserted.insert(line_of(&lines, 3), Line::Event(RecordLine::of(&forged)).to_json());
    let found = problems(&verify_with(&public(&key), &inserted, Vec::new()));
    assert!(found[0].contains("record 3: expected sequence number 4"), "{found:?}");

    let mut reordered = lines.clone();
    reordered.swap(line_of(&lines, 2), line_of(&lines, 3));
    let found = problems(&verify_with(&public(&key), &reordered, Vec::new()));
    assert!(found[0].contains("line 2, record 3: expected sequence number 2"), "{found:?}");
}

#[test]
fn truncation_is_caught_whether_or_not_the_seal_is_kept() {
    let key = keypair(1);
    let lines = export(&key, &records(10, "real"), true);

    // Cut right after a checkpoint, so the file still ends on a valid signature.
    let cut = line_of(&lines, 8) + 2;
    let found = problems(&verify_with(&public(&key), &lines[..cut], Vec::new()));
    assert_eq!(
        found,
        [format!(
            "line {}: the file ends without the export's signed seal (truncated, or not a whole export)",
            cut + 1
        )]
    );

    let mut kept_seal = lines[..cut].to_vec();
    kept_seal.push(lines.last().unwrap().clone());
    let found = problems(&verify_with(&public(&key), &kept_seal, Vec::new()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("the seal vouches for records 1..=10 (10 records), but the file holds 1..=8 (8 records)")
    );

    let mut appended = lines.clone();
    appended.push(lines[0].clone());
    let found = problems(&verify_with(&public(&key), &appended, Vec::new()));
    assert!(found[0].contains("a line follows the seal"), "{found:?}");
}

#[test]
fn a_chain_resigned_with_another_key_is_refused() {
    let (key, other) = (keypair(1), keypair(2));
    let lines = export(&other, &records(5, "real"), true);
    let found = problems(&verify_with(&public(&key), &lines, Vec::new()));
    assert!(found[0].contains("checkpoint: signed by key"), "{found:?}");
    assert!(found.last().unwrap().contains("seal: signed by key"), "{found:?}");
}

#[test]
fn a_rewritten_chain_fails_its_stored_checkpoints() {
    // Every record rewritten and every hash recomputed, without the key: the old checkpoints stay.
    let key = keypair(1);
    let real = records(10, "real");
    let rewritten = records(10, "forged");
    let mut lines = Vec::new();
    for (record, original) in rewritten.iter().zip(&real) {
        lines.push(Line::Event(RecordLine::of(record)).to_json());
        if record.seq % 4 == 0 {
            lines.push(Line::Checkpoint(checkpoint(&key, original)).to_json());
        }
    }
    lines.push(seal(&key, &real, true));
    let found = problems(&verify_with(&public(&key), &lines, Vec::new()));
    assert!(found[0].contains("the checkpoint signed at record 4 names hash"), "{found:?}");
    assert!(found[0].ends_with("(records rewritten)"), "{found:?}");
}

#[test]
fn a_rewrite_by_the_key_holder_is_caught_by_the_sink() {
    // The rewriter holds the key and re-signs everything; only the sink's copies disagree.
    let key = keypair(1);
    let real = records(10, "real");
    let sink: Vec<Checkpoint> = real.iter().filter(|r| r.seq % 4 == 0).map(|r| checkpoint(&key, r)).collect();
    let forged = export(&key, &records(10, "forged"), true);
    assert!(verify_with(&public(&key), &forged, Vec::new()).intact(), "without the sink it looks whole");
    let found = problems(&verify_with(&public(&key), &forged, sink.clone()));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("the sink's checkpoint for record 4 names hash"), "{found:?}");

    // Rolled back to an earlier head and re-sealed: the sink saw records that are gone.
    let rolled_back = export(&key, &real[..7], true);
    let found = problems(&verify_with(&public(&key), &rolled_back, sink.clone()));
    assert!(found[0].contains("the sink holds a checkpoint for record 8, past the end"), "{found:?}");

    // The genuine export agrees with the sink.
    let report = verify_with(&public(&key), &export(&key, &real, true), sink);
    assert!(report.intact(), "{:?}", problems(&report));
    assert_eq!(report.sink_checkpoints, 2);
}

#[test]
fn a_partial_export_verifies_from_its_first_record() {
    let key = keypair(1);
    let chain = records(10, "real");
    let report = verify_with(&public(&key), &export(&key, &chain[4..], false), Vec::new());
    assert!(report.intact(), "{:?}", problems(&report));
    assert_eq!((report.first_seq, report.records), (Some(5), 6));
}

#[test]
fn garbage_lines_are_named_and_checking_goes_on() {
    let key = keypair(1);
    let mut lines = export(&key, &records(3, "real"), true);
    lines.insert(1, "{not json".into());
    let found = problems(&verify_with(&public(&key), &lines, Vec::new()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("line 2: not an audit export line"), "{found:?}");
}
