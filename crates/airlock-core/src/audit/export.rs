//! The audit export format (JSON Lines) and its offline verification.
//!
//! An export holds one chain's records in order, each stored checkpoint right after the record
//! it signs, and a signed [`Seal`] as its last line:
//!
//! ```text
//! {"event":{"seq":1,"chain_id":"broker","prev_hash":"00…","hash":"9f…","at_ms":…,"kind":"request.created","actor":"alice","details":{…}}}
//! {"checkpoint":{"chain_id":"broker","seq":1,"head_hash":"9f…","at_ms":…,"key_id":"…","signature":"…"}}
//! {"seal":{"chain_id":"broker","first_seq":1,"last_seq":1,"last_hash":"9f…","records":1,"to_head":true,…}}
//! ```
//!
//! `details` is the exact JSON text that was hashed, embedded as it is (never re-encoded), so a
//! verifier hashes the bytes it reads; a stored text that is not JSON travels as the string
//! `details_text`. A [`Verifier`] checks a stream of such lines, or of records and checkpoints
//! read from storage, with one public key and no broker: every hash and link, every signature,
//! every checkpoint against the record it names, the seal against what the file holds, and
//! checkpoints kept elsewhere (a sink file) against the records. It does not stop at the first
//! problem: each one names its line and record.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::checkpoint::{Checkpoint, Seal, SignatureError};
use super::{ChainHead, ChainRecord, GENESIS_HASH, hex_str, record_hash};

/// How many problems a report keeps in full; the rest are counted.
pub const KEPT_PROBLEMS: usize = 1000;

/// One record as written to (and read back from) an export line.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordLine<'a> {
    pub seq: i64,
    #[serde(borrow)]
    pub chain_id: Cow<'a, str>,
    #[serde(borrow)]
    pub prev_hash: Cow<'a, str>,
    #[serde(borrow)]
    pub hash: Cow<'a, str>,
    pub at_ms: i64,
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub actor: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub details: Option<&'a RawValue>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub details_text: Option<Cow<'a, str>>,
}

impl<'a> RecordLine<'a> {
    /// The line for `record`, its details embedded as JSON when they are JSON.
    pub fn of(record: &'a ChainRecord) -> Self {
        let mut line = Self::as_text(record);
        if let Ok(raw) = serde_json::from_str::<&RawValue>(&record.details) {
            (line.details, line.details_text) = (Some(raw), None);
        }
        line
    }

    /// The line for `record` with its details as text, unparsed (enough to check it).
    fn as_text(record: &'a ChainRecord) -> Self {
        Self {
            seq: record.seq,
            chain_id: Cow::Borrowed(&record.chain_id),
            prev_hash: Cow::Borrowed(&record.prev_hash),
            hash: Cow::Borrowed(&record.hash),
            at_ms: record.at_ms,
            kind: Cow::Borrowed(&record.kind),
            actor: Cow::Borrowed(&record.actor),
            details: None,
            details_text: Some(Cow::Borrowed(&record.details)),
        }
    }

    /// The details text exactly as it was hashed.
    fn details(&self) -> &str {
        match (&self.details, &self.details_text) {
            (Some(raw), _) => raw.get(),
            (None, Some(text)) => text,
            (None, None) => "",
        }
    }
}

/// One line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line<'a> {
    #[serde(borrow)]
    Event(RecordLine<'a>),
    Checkpoint(Checkpoint),
    Seal(Seal),
}

impl Line<'_> {
    /// The line's JSON text, without the newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("export lines always serialise")
    }
}

/// Where a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The line of the file (1-based), when checking a file.
    pub line: Option<u64>,
    pub seq: Option<i64>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.seq) {
            (Some(line), Some(seq)) => write!(f, "line {line}, record {seq}"),
            (Some(line), None) => write!(f, "line {line}"),
            (None, Some(seq)) => write!(f, "record {seq}"),
            (None, None) => write!(f, "end of file"),
        }
    }
}

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {problem}")]
pub struct Failure {
    pub place: Place,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not an audit export line ({0})")]
    Unreadable(String),
    #[error("its contents do not match its hash (edited)")]
    Edited,
    #[error("expected sequence number {expected} (a record was deleted, inserted or moved)")]
    Sequence { expected: i64 },
    #[error("it does not link to the record before it (a record was deleted, inserted or moved)")]
    Link,
    #[error("belongs to chain `{found}`, not `{expected}`")]
    OtherChain { found: String, expected: String },
    #[error("checkpoint: {0}")]
    CheckpointSignature(SignatureError),
    #[error(
        "the checkpoint signed at record {seq} names hash {signed}, but the record's hash is {found} (records rewritten)"
    )]
    CheckpointMismatch { seq: i64, signed: String, found: String },
    #[error("a checkpoint for record {seq} follows record {after} (the record it signs is missing or out of order)")]
    CheckpointOutOfPlace { seq: i64, after: i64 },
    #[error("sink checkpoint for record {seq}: {error}")]
    SinkSignature { seq: i64, error: SignatureError },
    #[error(
        "the sink's checkpoint for record {seq} names hash {signed}, but the record's hash is {found} (records rewritten)"
    )]
    SinkMismatch { seq: i64, signed: String, found: String },
    #[error(
        "the sink holds a checkpoint for record {seq}, past the end of an export that claims to reach the chain's head (records were removed)"
    )]
    SinkBeyondEnd { seq: i64 },
    #[error("seal: {0}")]
    SealSignature(SignatureError),
    #[error("the seal vouches for records {sealed}, but the file holds {found} (records were cut or added)")]
    SealMismatch { sealed: String, found: String },
    #[error("a line follows the seal (the export was appended to)")]
    AfterSeal,
    #[error("the file ends without the export's signed seal (truncated, or not a whole export)")]
    NoSeal,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub records: i64,
    pub first_seq: Option<i64>,
    /// The last record read, and its hash.
    pub head: Option<ChainHead>,
    pub checkpoints: u64,
    pub sink_checkpoints: u64,
    /// The seal's time, when the file was sealed.
    pub sealed_at_ms: Option<i64>,
    pub failures: Vec<Failure>,
    /// Problems found beyond the [`KEPT_PROBLEMS`] kept in `failures`.
    pub more_failures: u64,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Checks one chain's records and checkpoints, streamed in order.
pub struct Verifier {
    public_key: [u8; 32],
    chain_id: Option<String>,
    /// The last record read, which the next one must link to.
    last: Option<ChainHead>,
    /// Checkpoints from a sink, by ascending sequence number, not yet matched to a record.
    sink: VecDeque<Checkpoint>,
    seal: Option<Seal>,
    line: Option<u64>,
    report: Report,
}

impl Verifier {
    /// A verifier for records signed by `public_key`, also checking `sink` checkpoints (kept
    /// apart from the records, e.g. in a file on another volume).
    pub fn new(public_key: [u8; 32], mut sink: Vec<Checkpoint>) -> Self {
        sink.sort_by_key(|c| c.seq);
        let mut verifier = Self {
            public_key,
            chain_id: None,
            last: None,
            sink: VecDeque::new(),
            seal: None,
            line: None,
            report: Report::default(),
        };
        for checkpoint in sink {
            match checkpoint.verify(&public_key) {
                Ok(()) => verifier.sink.push_back(checkpoint),
                Err(error) => {
                    verifier.fail(Some(checkpoint.seq), Problem::SinkSignature { seq: checkpoint.seq, error })
                }
            }
        }
        verifier
    }

    fn fail(&mut self, seq: Option<i64>, problem: Problem) {
        if self.report.failures.len() < KEPT_PROBLEMS {
            self.report.failures.push(Failure { place: Place { line: self.line, seq }, problem });
        } else {
            self.report.more_failures += 1;
        }
    }

    /// Checks one line of an export file (`number` is 1-based).
    pub fn line(&mut self, number: u64, text: &str) {
        self.line = Some(number);
        if self.seal.is_some() {
            self.fail(None, Problem::AfterSeal);
            return;
        }
        match serde_json::from_str::<Line<'_>>(text) {
            Ok(Line::Event(record)) => self.record(&record),
            Ok(Line::Checkpoint(checkpoint)) => self.checkpoint(&checkpoint),
            Ok(Line::Seal(seal)) => self.seal(seal),
            Err(error) => self.fail(None, Problem::Unreadable(error.to_string())),
        }
    }

    fn same_chain(&mut self, seq: i64, chain_id: &str) -> bool {
        match &self.chain_id {
            None => {
                self.chain_id = Some(chain_id.to_owned());
                true
            }
            Some(expected) if expected == chain_id => true,
            Some(expected) => {
                let problem = Problem::OtherChain { found: chain_id.to_owned(), expected: expected.clone() };
                self.fail(Some(seq), problem);
                false
            }
        }
    }

    /// Checks the next record.
    pub fn record(&mut self, record: &RecordLine<'_>) {
        let seq = record.seq;
        if !self.same_chain(seq, &record.chain_id) {
            return;
        }
        // The first record of a partial export (`--since`) links to a record outside the file.
        let expected_seq = self.last.as_ref().map_or(seq, |last| last.seq + 1);
        if self.last.is_none() && seq == 1 && record.prev_hash != GENESIS_HASH {
            self.fail(Some(seq), Problem::Link);
        }
        if seq != expected_seq {
            self.fail(Some(seq), Problem::Sequence { expected: expected_seq });
        } else if let Some(last) = &self.last
            && record.prev_hash != last.hash
        {
            self.fail(Some(seq), Problem::Link);
        }
        let recomputed = record_hash(
            seq,
            &record.chain_id,
            &record.prev_hash,
            record.at_ms,
            &record.kind,
            &record.actor,
            record.details(),
        );
        if hex_str(&recomputed) != record.hash {
            self.fail(Some(seq), Problem::Edited);
        }
        self.report.records += 1;
        self.report.first_seq.get_or_insert(seq);
        // Carry on from this record as stored, so one problem is reported once.
        match &mut self.last {
            Some(last) => {
                last.seq = seq;
                last.hash.clear();
                last.hash.push_str(&record.hash);
            }
            None => self.last = Some(ChainHead { seq, hash: record.hash.to_string() }),
        }
        self.match_sink(seq, &record.hash);
    }

    /// Checks the next record as read from storage (its details need no parsing).
    pub fn stored(&mut self, record: &ChainRecord) {
        self.record(&RecordLine::as_text(record));
    }

    fn match_sink(&mut self, seq: i64, hash: &str) {
        while self.sink.front().is_some_and(|c| c.seq <= seq) {
            let checkpoint = self.sink.pop_front().expect("front was checked");
            if checkpoint.seq == seq {
                self.report.sink_checkpoints += 1;
                if checkpoint.head_hash != hash {
                    let problem = Problem::SinkMismatch { seq, signed: checkpoint.head_hash, found: hash.to_owned() };
                    self.fail(Some(seq), problem);
                }
            }
            // A sink checkpoint before the file's first record is outside what it can check.
        }
    }

    /// Checks a stored checkpoint, which must follow the record it signs.
    pub fn checkpoint(&mut self, checkpoint: &Checkpoint) {
        let seq = checkpoint.seq;
        if !self.same_chain(seq, &checkpoint.chain_id) {
            return;
        }
        if let Err(error) = checkpoint.verify(&self.public_key) {
            self.fail(Some(seq), Problem::CheckpointSignature(error));
            return;
        }
        match &self.last {
            Some(last) if last.seq == seq => {
                if last.hash != checkpoint.head_hash {
                    let problem = Problem::CheckpointMismatch {
                        seq,
                        signed: checkpoint.head_hash.clone(),
                        found: last.hash.clone(),
                    };
                    self.fail(Some(seq), problem);
                }
                self.report.checkpoints += 1;
            }
            last => {
                let after = last.as_ref().map_or(0, |l| l.seq);
                self.fail(Some(seq), Problem::CheckpointOutOfPlace { seq, after });
            }
        }
    }

    fn seal(&mut self, seal: Seal) {
        if let Err(error) = seal.verify(&self.public_key) {
            self.fail(None, Problem::SealSignature(error));
        } else {
            let found =
                (self.report.first_seq.unwrap_or(0), self.last.as_ref().map_or(0, |l| l.seq), self.report.records);
            let last_hash = self.last.as_ref().map_or(GENESIS_HASH, |l| l.hash.as_str());
            if (seal.first_seq, seal.last_seq, seal.records) != found || seal.last_hash != last_hash {
                let sealed = describe(seal.first_seq, seal.last_seq, seal.records);
                let problem = Problem::SealMismatch { sealed, found: describe(found.0, found.1, found.2) };
                self.fail(None, problem);
            }
            self.report.sealed_at_ms = Some(seal.at_ms);
        }
        self.seal = Some(seal);
    }

    /// Ends the check. A file must end with its seal (`sealed`); records read from storage have none.
    pub fn finish(mut self, sealed: bool) -> Report {
        self.line = self.line.map(|n| n + 1);
        if sealed && self.seal.is_none() {
            self.fail(None, Problem::NoSeal);
        }
        // A sink checkpoint signed before an export that reached the head must be inside it.
        if let Some(seal) = self.seal.take().filter(|s| s.to_head && self.report.sealed_at_ms.is_some()) {
            let beyond: Vec<i64> =
                self.sink.iter().filter(|c| c.seq > seal.last_seq && c.at_ms <= seal.at_ms).map(|c| c.seq).collect();
            for seq in beyond {
                self.fail(Some(seq), Problem::SinkBeyondEnd { seq });
            }
        }
        self.report.head = self.last;
        self.report
    }
}

fn describe(first: i64, last: i64, records: i64) -> String {
    if records == 0 { "none".to_owned() } else { format!("{first}..={last} ({records} records)") }
}
