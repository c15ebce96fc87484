//! Reading the audit chain for auditors: the tail, verification, and exports.
//!
//! Verification and exports read the chain page by page, with each stored checkpoint placed
//! right after the record it signs ([`ChainReader`]), so neither holds the whole chain in memory.
//! Verification is the same check an auditor runs offline on an export
//! ([`airlock_core::audit::export::Verifier`]), with the broker's own public key.

use std::collections::VecDeque;

use airlock_core::audit::checkpoint::{Checkpoint, Seal, SealContents};
use airlock_core::audit::export::{Line, RecordLine, Report, Verifier};
use airlock_core::audit::{ChainRecord, GENESIS_HASH, redaction, unix_ms};
use airlock_store::{BROKER_CHAIN, Store};
use time::OffsetDateTime;

use crate::broker::{Broker, BrokerError, Caller};

/// Records read from the store at a time.
const PAGE: u32 = 2_000;

/// One thing of a chain, in export order.
#[derive(Debug)]
pub enum Entry {
    Record(ChainRecord),
    Checkpoint(Checkpoint),
}

/// Reads records `from..=to` of the broker chain, page by page, with their checkpoints.
pub struct ChainReader {
    store: Store,
    next: i64,
    to: i64,
}

impl ChainReader {
    fn new(store: Store, from: i64, to: i64) -> Self {
        Self { store, next: from, to }
    }

    /// The next page, or `None` after the last. Checkpoints follow the record they sign; one
    /// whose record is missing comes at the point where that record should have been.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Entry>>, BrokerError> {
        if self.next > self.to {
            return Ok(None);
        }
        let records = self.store.audit_records(BROKER_CHAIN, self.next, self.to, PAGE).await?;
        let last_of_page = match records.last() {
            Some(last) if records.len() == PAGE as usize => last.seq,
            _ => self.to,
        };
        let mut checkpoints: VecDeque<Checkpoint> =
            self.store.checkpoints(BROKER_CHAIN, self.next, last_of_page).await?.into();
        let mut entries = Vec::with_capacity(records.len() + checkpoints.len());
        for record in records {
            while let Some(checkpoint) = checkpoints.pop_front_if(|c| c.seq < record.seq) {
                entries.push(Entry::Checkpoint(checkpoint));
            }
            let seq = record.seq;
            entries.push(Entry::Record(record));
            if let Some(checkpoint) = checkpoints.pop_front_if(|c| c.seq == seq) {
                entries.push(Entry::Checkpoint(checkpoint));
            }
        }
        entries.extend(checkpoints.into_iter().map(Entry::Checkpoint));
        self.next = last_of_page.saturating_add(1);
        Ok(Some(entries))
    }
}

/// An export being written: pages of JSON lines, then the seal.
pub struct AuditExport {
    broker: Broker,
    reader: ChainReader,
    to_head: bool,
    first: Option<i64>,
    last: Option<(i64, String)>,
    records: i64,
    sealed: bool,
}

impl AuditExport {
    /// The next lines (each ending in a newline), or `None` once the seal has been written.
    pub async fn next_lines(&mut self) -> Result<Option<String>, BrokerError> {
        if self.sealed {
            return Ok(None);
        }
        let mut text = String::new();
        match self.reader.next_page().await? {
            Some(entries) => {
                for entry in &entries {
                    let line = match entry {
                        Entry::Record(record) => {
                            self.first.get_or_insert(record.seq);
                            self.last = Some((record.seq, record.hash.clone()));
                            self.records += 1;
                            Line::Event(RecordLine::of(record))
                        }
                        Entry::Checkpoint(checkpoint) => Line::Checkpoint(checkpoint.clone()),
                    };
                    text.push_str(&line.to_json());
                    text.push('\n');
                }
            }
            None => {
                let (last_seq, last_hash) = self.last.clone().unwrap_or((0, GENESIS_HASH.to_owned()));
                let contents = SealContents {
                    chain_id: BROKER_CHAIN,
                    first_seq: self.first.unwrap_or(0),
                    last_seq,
                    last_hash: &last_hash,
                    records: self.records,
                    to_head: self.to_head,
                    at_ms: unix_ms(self.broker.clock().now()),
                };
                let seal = Seal::sign(&self.broker.key().keypair(), &contents)?;
                text.push_str(&Line::Seal(seal).to_json());
                text.push('\n');
                self.sealed = true;
            }
        }
        Ok(Some(text))
    }
}

impl Broker {
    /// The last `n` audit records; auditors only.
    pub async fn audit_tail(&self, caller: &Caller, n: u32) -> Result<Vec<ChainRecord>, BrokerError> {
        self.auditors_only(caller)?;
        Ok(self.store().audit_tail(BROKER_CHAIN, n.clamp(1, 10_000)).await?)
    }

    pub(crate) fn auditors_only(&self, caller: &Caller) -> Result<(), BrokerError> {
        if self.is_auditor(caller) { Ok(()) } else { Err(BrokerError::AuditForbidden) }
    }

    /// Whether `value` is what the redacted value with `commitment` was; auditors only. A
    /// commitment without a salt (unknown, or its salt deleted) is "not found".
    pub async fn audit_prove(&self, caller: &Caller, commitment: &str, value: &str) -> Result<bool, BrokerError> {
        self.auditors_only(caller)?;
        let salt = self.store().audit_salt(commitment).await?;
        let salt = salt.ok_or_else(|| BrokerError::CommitmentNotFound(commitment.to_owned()))?;
        Ok(redaction::commitment(&salt, value) == commitment)
    }

    /// Checks the whole audit chain and its checkpoints; auditors only.
    pub async fn audit_verify(&self, caller: &Caller) -> Result<Report, BrokerError> {
        self.auditors_only(caller)?;
        self.verify_chain().await
    }

    /// Checks the whole audit chain and its checkpoints with the broker's key (also for
    /// administrators with the data directory in hand).
    pub async fn verify_chain(&self) -> Result<Report, BrokerError> {
        let head = self.store().audit_head(BROKER_CHAIN).await?;
        let mut reader = ChainReader::new(self.store().clone(), 1, head.seq);
        let mut verifier = Verifier::new(self.key().public_key(), Vec::new());
        while let Some(entries) = reader.next_page().await? {
            for entry in entries {
                match entry {
                    Entry::Record(record) => verifier.stored(&record),
                    Entry::Checkpoint(checkpoint) => verifier.checkpoint(&checkpoint),
                }
            }
        }
        Ok(verifier.finish(false))
    }

    /// Exports the records made in `since..until` (each bound open when `None`), with their
    /// checkpoints and a signed seal; auditors only. The export ends at the head as it was when
    /// the export began.
    pub async fn audit_export(
        &self,
        caller: &Caller,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<AuditExport, BrokerError> {
        self.auditors_only(caller)?;
        let head = self.store().audit_head(BROKER_CHAIN).await?;
        let span = self.store().audit_span(BROKER_CHAIN, since.map(unix_ms), until.map(unix_ms)).await?;
        let (from, to) = match span {
            Some((first, last)) => (first, last.min(head.seq)),
            None => (1, 0),
        };
        Ok(AuditExport {
            broker: self.clone(),
            reader: ChainReader::new(self.store().clone(), from, to),
            to_head: to == head.seq,
            first: None,
            last: None,
            records: 0,
            sealed: false,
        })
    }
}
