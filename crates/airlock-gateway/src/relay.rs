//! The relay of one live session: client messages to the target, the target's answers to the
//! client, checking each statement before it leaves and recording each one when it completes,
//! until one side leaves or the session is cut.
//!
//! Frames are passed on as they arrive, in pieces when large, so a million-row result flows
//! through without being held. Only a few frames are looked into: statements going out (`Query`,
//! `Parse`, `Bind`, `Execute`, `Close`, `FunctionCall`) and outcomes coming back
//! (`CommandComplete`, `EmptyQueryResponse`, `PortalSuspended`, `ErrorResponse`,
//! `ReadyForQuery`). A statement's outcome is matched to it by order: the server answers in the
//! order it was asked, and skips to the next `Sync` after an error.
//!
//! A refused statement is never sent. In its place the target gets a statement that fails to
//! parse and names a marker unique to the session; when that error comes back, the client gets
//! the gateway's refusal instead. Going through the server keeps every answer in protocol order
//! and gives exactly PostgreSQL's error semantics: the rest of the pipeline up to `Sync` is
//! skipped, and an open transaction is aborted as by any failed statement.
//!
//! Only the loop that reads the target writes to the client, so the gateway's own final
//! `ErrorResponse` (grant ended, idle, shut down) always falls between two whole frames.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::audit::redaction::ORIGINAL_STATEMENT;
use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::ids::{GrantId, ResourceName, RoleName, UserName};
use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::guard::{Allowed, Checked, Guard, Refusal, encoding_sensitive};
use crate::recorder::Recorder;
use crate::registry::Backend;
use crate::target::error_fields;
use crate::wire::{self, Piece, ReadBuffer, Scanner, Severity, body, cstr, tag};

/// The largest message a client may send, other than COPY data (which is streamed).
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024 * 1024;
/// The largest message from the target held whole, other than rows and COPY data.
const MAX_SERVER_MESSAGE: usize = 256 * 1024 * 1024;
/// Statement text kept in an audit record, at most; longer texts keep their length and hash.
const MAX_RECORDED_TEXT: usize = 8 * 1024;
/// How long a cut session waits for its running statement's cancel request to be taken.
const CANCEL_WITHIN: Duration = Duration::from_secs(2);
/// How long after a cut the database's side of the session is closed.
const CLOSE_DATABASE_AFTER: Duration = Duration::from_millis(100);

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The client said goodbye or went away.
    ClientLeft,
    /// The target closed the connection.
    TargetClosed,
    /// The broker no longer knows the grant as live (revoked, expired, user disabled).
    GrantEnded,
    /// The grant's end (or the credential's) was reached.
    Expired,
    /// The broker could not confirm the grant for too long: fail closed.
    Unconfirmed,
    Idle(Duration),
    Shutdown,
    /// The server now reads statement text differently from the guard (a lexing setting
    /// changed: `standard_conforming_strings`, `client_encoding`): fail closed.
    ReadingChanged(String),
    /// A peer broke the protocol, or a connection failed.
    Broken(String),
}

impl Ending {
    /// The short name recorded in the audit chain.
    pub fn code(&self) -> &'static str {
        match self {
            Ending::ClientLeft => "client_left",
            Ending::TargetClosed => "target_closed",
            Ending::GrantEnded => "grant_ended",
            Ending::Expired => "grant_expired",
            Ending::Unconfirmed => "grant_unconfirmed",
            Ending::Idle(_) => "idle_timeout",
            Ending::Shutdown => "gateway_shutdown",
            Ending::ReadingChanged(_) => "reading_changed",
            Ending::Broken(_) => "connection_broken",
        }
    }

    /// Whether the gateway ended the session (and told the client why), rather than a side leaving.
    pub fn told_client(&self) -> bool {
        !matches!(self, Ending::ClientLeft | Ending::TargetClosed)
    }

    /// What the client is told, if the gateway ends the session: SQLSTATE and message.
    fn notice(&self, grant: &GrantId) -> Option<(&'static str, String)> {
        let text = match self {
            Ending::ClientLeft | Ending::TargetClosed => return None,
            Ending::GrantEnded => {
                format!("airlock: grant {grant} has ended (revoked or expired); the session is closed")
            }
            Ending::Expired => format!("airlock: grant {grant} has expired; the session is closed"),
            Ending::Unconfirmed => {
                format!(
                    "airlock: the gateway cannot confirm with the broker that grant {grant} is live; the session is closed"
                )
            }
            Ending::Idle(after) => {
                let after = after.as_secs();
                return Some(("57P05", format!("airlock: the session was idle for {after} s; it is closed")));
            }
            Ending::Shutdown => "airlock: the gateway is shutting down; the session is closed".to_owned(),
            Ending::ReadingChanged(setting) => {
                return Some((
                    "42501",
                    format!(
                        "airlock: the server now reads statement text differently from the gateway's check ({setting}); the session is closed"
                    ),
                ));
            }
            Ending::Broken(why) => return Some(("08P01", format!("airlock: {why}"))),
        };
        Some(("57P01", text))
    }
}

/// Everything fixed about a session once it is admitted.
pub struct Session {
    pub id: Uuid,
    pub grant: GrantId,
    pub user: UserName,
    pub resource: ResourceName,
    pub role: RoleName,
    pub allowed: Allowed,
    pub guard: Arc<Guard>,
    pub recorder: Recorder,
    /// Record statements with their literals replaced by `$n`.
    pub redact: bool,
    /// Each statement's `statement.started` is committed before the statement is sent (the
    /// default); false for a resource with `audit = "after"`, whose statements are recorded only
    /// once they complete.
    pub audit_before: bool,
    /// The longest statement text read; longer ones are refused before they are parsed.
    pub max_statement_bytes: usize,
    pub idle_timeout: Duration,
    /// When the grant (or the credential) ends.
    pub ends_at: Instant,
    /// The text sent in place of a refused statement; unique to the session.
    pub marker: String,
}

impl Session {
    /// An audit event about this session, with `details` added to its ids.
    pub fn event(&self, kind: EventKind, details: Value) -> AuditEvent {
        let mut all = json!({
            "session": self.id,
            "grant": self.grant,
            "resource": self.resource,
            "role": self.role,
        });
        if let (Value::Object(all), Value::Object(more)) = (&mut all, details) {
            all.extend(more);
        }
        AuditEvent { kind, actor: self.user.as_str().to_owned(), at: OffsetDateTime::now_utc(), details: all }
    }

    /// The record that `pending` is about to be sent.
    fn started(&self, pending: &Pending) -> AuditEvent {
        let mut details = self.recorded_text(&pending.text);
        details["statement"] = json!(pending.number);
        details["params"] = json!(pending.params);
        self.event(EventKind::StatementStarted, details)
    }

    /// The statement as recorded. With literals redacted, the original goes along as
    /// `text_original`, which the broker always replaces by a salted commitment before chaining.
    fn recorded_text(&self, text: &str) -> Value {
        if text.len() > self.max_statement_bytes {
            // Too long to be read (and so to be redacted): its size and digest only.
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
            return json!({ "text_bytes": text.len(), "text_sha256": digest });
        }
        let (text, original) =
            if self.redact { (crate::guard::redact(text), Some(text)) } else { (text.to_owned(), None) };
        let mut recorded = text_fields(text);
        if let (Some(original), Value::Object(fields)) = (original, &mut recorded) {
            fields.insert(ORIGINAL_STATEMENT.to_owned(), original.into());
        }
        recorded
    }
}

/// The text, cut to [`MAX_RECORDED_TEXT`] with the whole text's length and SHA-256 when longer.
fn text_fields(text: String) -> Value {
    if text.len() <= MAX_RECORDED_TEXT {
        return json!({ "text": text });
    }
    let mut cut = MAX_RECORDED_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
    json!({ "text": &text[..cut], "text_bytes": text.len(), "text_sha256": digest })
}

/// A statement sent to the target whose outcome is awaited.
struct Pending {
    /// Its number in the session, from 1, in both of its records.
    number: u64,
    text: Arc<str>,
    params: usize,
    sent: Instant,
}

/// What the target will answer next, in order.
enum Expect {
    Statement(Pending),
    /// A refused statement's stand-in: its error is replaced by the refusal (SQLSTATE, message).
    Refused(&'static str, Arc<str>),
    /// A `ReadyForQuery` (after a `Query`, `Sync` or `FunctionCall`).
    Ready,
}

/// What both directions share.
#[derive(Default)]
struct Exchange {
    expected: VecDeque<Expect>,
    /// When either side last sent anything.
    last_activity: Option<Instant>,
}

impl Exchange {
    fn busy(&self) -> bool {
        self.expected.iter().any(|e| !matches!(e, Expect::Ready))
    }
}

/// The client's and the target's connections, each split in two.
pub struct Ends<CR, CW, SR, SW> {
    pub client_read: CR,
    pub client_write: CW,
    pub target_read: SR,
    pub target_write: SW,
}

/// Relays until the session ends, and says why. `cut` carries an ending decided elsewhere
/// (grant ended, shutdown). The connections stay open: the caller closes them ([`close`]).
pub async fn relay<CR, CW, SR, SW>(
    session: &Session,
    ends: &mut Ends<CR, CW, SR, SW>,
    cut: &mut watch::Receiver<Option<Ending>>,
) -> Ended
where
    CR: AsyncRead + Unpin + Send,
    CW: AsyncWrite + Unpin + Send,
    SR: AsyncRead + Unpin + Send,
    SW: AsyncWrite + Unpin + Send,
{
    let Ends { client_read, client_write, target_read, target_write } = ends;
    let exchange = Mutex::new(Exchange { last_activity: Some(Instant::now()), ..Exchange::default() });
    let outbound = Box::pin(client_to_target(session, client_read, target_write, &exchange));
    target_to_client(session, target_read, client_write, outbound, &exchange, cut).await
}

/// How a relay ended: why, and whether a statement was still running at the database.
#[derive(Debug)]
pub struct Ended {
    pub ending: Ending,
    pub statement_running: bool,
}

/// Closes a session's connections once [`relay`] has returned `ended`. A client that left is
/// treated as PostgreSQL treats it: whatever it sent runs to its end (the grant's end still
/// reaches that backend through the connector). When the gateway ended the session (and so told
/// the client why and closed the client's connection):
/// - a statement still running is cancelled at the database (`backend`) at once: PostgreSQL does
///   not notice a closed connection until it has something to send, so a long statement would
///   run on, and commit, after its session ended;
/// - the database's connection, which nothing reaches any more, is closed [`CLOSE_DATABASE_AFTER`]
///   later. A backend that exits costs the database server CPU (about a millisecond each on a small
///   machine): when many sessions are cut at once (a revoked grant's, every one at shutdown),
///   closing theirs at once would hold up the clients still reading their notice
///   (docs/benchmarks.md: for 100 sessions cut together, a p99 of 97 ms, and 7 ms this way).
pub async fn close<CR, CW, SR, SW>(ends: Ends<CR, CW, SR, SW>, ended: &Ended, backend: &Backend) {
    if ended.ending.told_client() {
        if ended.statement_running {
            match tokio::time::timeout(CANCEL_WITHIN, backend.cancel()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot cancel a cut session's running statement"),
                Err(_) => tracing::warn!("cannot cancel a cut session's running statement in time"),
            }
        }
        tokio::time::sleep(CLOSE_DATABASE_AFTER).await;
    }
    drop(ends);
}

fn lock(exchange: &Mutex<Exchange>) -> std::sync::MutexGuard<'_, Exchange> {
    exchange.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the client, checks what it asks, and writes it to the target. Returns only when the
/// client leaves or breaks the protocol.
async fn client_to_target(
    session: &Session,
    client: &mut (impl AsyncRead + Unpin),
    target: &mut (impl AsyncWrite + Unpin),
    exchange: &Mutex<Exchange>,
) -> Ending {
    let mut scanner = Scanner::new(MAX_CLIENT_MESSAGE, b"d");
    let mut reader = ReadBuffer::default();
    let mut statements: HashMap<String, Arc<str>> = HashMap::new();
    let mut portals: HashMap<String, (Arc<str>, usize)> = HashMap::new();
    let mut numbered = 0u64;
    loop {
        let buffer = match client.read_buf(reader.for_read()).await {
            Ok(0) => return Ending::ClientLeft,
            Ok(read) => reader.after_read(read),
            Err(error) => return Ending::Broken(format!("reading from the client: {error}")),
        };
        let mut out = BytesMut::new();
        let mut refusals = Vec::new();
        let mut started = Vec::new();
        let mut leaving = false;
        loop {
            let piece = match scanner.next(buffer) {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                Err(error) => return Ending::Broken(format!("the client sent an invalid message: {error}")),
            };
            let frame = match piece {
                Piece::Stream(bytes) => {
                    out.unsplit(bytes);
                    continue;
                }
                Piece::Frame(frame) => frame,
            };
            let mut forward = true;
            match tag(&frame) {
                b'Q' => {
                    let text = match cstr(&mut body(&frame)) {
                        Some(text) => text,
                        None => return Ending::Broken("the client sent a malformed Query".to_owned()),
                    };
                    let mut exchange = lock(exchange);
                    match check(session, text, &exchange) {
                        Ok(checked) => {
                            let now = Instant::now();
                            for statement in checked.statements {
                                numbered += 1;
                                let pending =
                                    Pending { number: numbered, text: Arc::from(statement), params: 0, sent: now };
                                started.push(session.started(&pending));
                                exchange.expected.push_back(Expect::Statement(pending));
                            }
                        }
                        Err(refusal) => {
                            forward = false;
                            stand_in(&mut out, session, None);
                            let message = refused_message(session, &refusal).into();
                            exchange.expected.push_back(Expect::Refused(refusal.sqlstate(), message));
                            refusals.push((text.to_owned(), refusal));
                        }
                    }
                    exchange.expected.push_back(Expect::Ready);
                }
                b'P' => {
                    let mut rest = body(&frame);
                    let (Some(name), Some(text)) = (cstr(&mut rest), cstr(&mut rest)) else {
                        return Ending::Broken("the client sent a malformed Parse".to_owned());
                    };
                    let checked = check(session, text, &lock(exchange));
                    match checked {
                        Ok(_) => {
                            statements.insert(name.to_owned(), Arc::from(text));
                        }
                        Err(refusal) => {
                            forward = false;
                            stand_in(&mut out, session, Some(name));
                            statements.remove(name);
                            let message = refused_message(session, &refusal).into();
                            lock(exchange).expected.push_back(Expect::Refused(refusal.sqlstate(), message));
                            refusals.push((text.to_owned(), refusal));
                        }
                    }
                }
                b'B' => {
                    let mut rest = body(&frame);
                    if let (Some(portal), Some(statement)) = (cstr(&mut rest), cstr(&mut rest)) {
                        let text = statements.get(statement).cloned().unwrap_or_else(|| unknown(statement));
                        portals.insert(portal.to_owned(), (text, bind_parameters(rest)));
                    }
                }
                b'E' => {
                    let portal = cstr(&mut body(&frame)).unwrap_or_default();
                    let (text, params) = portals.get(portal).cloned().unwrap_or_else(|| (unknown(portal), 0));
                    numbered += 1;
                    let pending = Pending { number: numbered, text, params, sent: Instant::now() };
                    started.push(session.started(&pending));
                    lock(exchange).expected.push_back(Expect::Statement(pending));
                }
                b'C' => {
                    let mut rest = body(&frame);
                    let kind = rest.first().copied();
                    rest.advance(rest.len().min(1));
                    if let Some(name) = cstr(&mut rest) {
                        match kind {
                            Some(b'S') => statements.remove(name),
                            _ => portals.remove(name).map(|(text, _)| text),
                        };
                    }
                }
                b'S' => lock(exchange).expected.push_back(Expect::Ready),
                b'F' => {
                    // The fast-path function call names a function by OID, out of the guard's
                    // sight (it can reach set_config or lo_import): refused, fail closed.
                    forward = false;
                    stand_in(&mut out, session, None);
                    let message = format!(
                        "airlock: the fast-path function call protocol is not allowed through the gateway (role `{}` on `{}`); call the function in a statement",
                        session.role, session.resource
                    );
                    let mut exchange = lock(exchange);
                    exchange.expected.push_back(Expect::Refused("42501", message.into()));
                    exchange.expected.push_back(Expect::Ready);
                }
                b'X' => leaving = true,
                _ => {}
            }
            if forward {
                out.unsplit(frame);
            }
        }
        lock(exchange).last_activity = Some(Instant::now());
        for (text, refusal) in refusals {
            let mut details = session.recorded_text(&text);
            details["refusal"] = json!(refusal.to_string());
            session.recorder.record(session.event(EventKind::StatementRefused, details)).await;
        }
        // Record before answer: nothing reaches the target before its record is committed, so a
        // crash can lose a statement's answer, never the record of a statement that ran.
        if session.audit_before && !started.is_empty() {
            session.recorder.record_durably(started).await;
        }
        if !out.is_empty()
            && let Err(error) = wire::send(target, &out).await
        {
            return Ending::Broken(format!("writing to the database: {error}"));
        }
        if leaving {
            return Ending::ClientLeft;
        }
    }
}

/// The guard's verdict on a statement text about to go out. A text whose reading depends on the
/// client encoding waits for nothing: it is refused while anything sent before it is unanswered,
/// since the server reports a changed encoding only when it is next ready.
fn check<'a>(session: &Session, text: &'a str, exchange: &Exchange) -> Result<Checked<'a>, Refusal> {
    // Before anything reads it: a parse tree costs tens of times its text.
    if text.len() > session.max_statement_bytes {
        return Err(Refusal::TooLong { bytes: text.len(), limit: session.max_statement_bytes });
    }
    if encoding_sensitive(text) && !exchange.expected.is_empty() {
        return Err(Refusal::Unsettled);
    }
    session.guard.check(text, &session.allowed)
}

fn unknown(name: &str) -> Arc<str> {
    Arc::from(format!("-- prepared statement or portal \"{name}\" (not seen by this gateway)"))
}

/// The number of parameter values in a Bind body that follows the portal and statement names.
fn bind_parameters(mut rest: &[u8]) -> usize {
    if rest.len() < 2 {
        return 0;
    }
    let formats = rest.get_i16().max(0) as usize;
    if rest.len() < formats * 2 + 2 {
        return 0;
    }
    rest.advance(formats * 2);
    rest.get_i16().max(0) as usize
}

/// The statement sent in place of a refused one: it fails to parse, naming the marker.
fn stand_in(out: &mut BytesMut, session: &Session, parse_name: Option<&str>) {
    let written = match parse_name {
        Some(name) => frontend::parse(name, &session.marker, std::iter::empty(), out),
        None => frontend::query(&session.marker, out),
    };
    written.expect("the marker holds no NUL byte");
}

fn refused_message(session: &Session, refusal: &Refusal) -> String {
    format!("airlock: {refusal} (role `{}` on `{}`)", session.role, session.resource)
}

/// Reads the target, records outcomes, writes to the client, and ends the session when asked.
async fn target_to_client(
    session: &Session,
    target: &mut (impl AsyncRead + Unpin),
    client: &mut (impl AsyncWrite + Unpin),
    mut outbound: Pin<Box<impl Future<Output = Ending>>>,
    exchange: &Mutex<Exchange>,
    cut: &mut watch::Receiver<Option<Ending>>,
) -> Ended {
    let mut scanner = Scanner::new(MAX_SERVER_MESSAGE, b"Dd");
    let mut reader = ReadBuffer::default();
    let mut outcomes = Outcomes::default();
    // Two timers for the whole session, not two per read: the idle one is armed for the last
    // activity it knew of, and moved on when it fires after more traffic.
    let expiry = tokio::time::sleep_until(session.ends_at);
    let idle = tokio::time::sleep_until(Instant::now() + session.idle_timeout);
    tokio::pin!(expiry, idle);
    let ending = loop {
        let read = tokio::select! {
            biased;
            changed = cut.changed() => match changed {
                Ok(()) => match cut.borrow_and_update().clone() {
                    Some(ending) => break ending,
                    None => continue,
                },
                Err(_) => break Ending::Shutdown,
            },
            () = &mut expiry => break Ending::Expired,
            () = &mut idle => {
                let mut exchange = lock(exchange);
                let now = Instant::now();
                match exchange.last_activity.map(|at| at + session.idle_timeout) {
                    Some(deadline) if deadline > now => idle.as_mut().reset(deadline),
                    _ if exchange.busy() => {
                        // A running statement is activity: look again a whole timeout from now.
                        exchange.last_activity = Some(now);
                        idle.as_mut().reset(now + session.idle_timeout);
                    }
                    _ => break Ending::Idle(session.idle_timeout),
                }
                continue;
            }
            ending = &mut outbound => break ending,
            read = target.read_buf(reader.for_read()) => read,
        };
        let buffer = match read {
            Ok(0) => break Ending::TargetClosed,
            Ok(read) => reader.after_read(read),
            Err(error) => break Ending::Broken(format!("reading from the database: {error}")),
        };
        let mut out = BytesMut::new();
        let mut events = Vec::new();
        let mut invalid = None;
        loop {
            let frame = match scanner.next(buffer) {
                Ok(Some(Piece::Frame(frame))) => frame,
                Ok(Some(Piece::Stream(bytes))) => {
                    out.unsplit(bytes);
                    continue;
                }
                Ok(None) => break,
                Err(error) => {
                    // What came before it is passed on and recorded; then the session ends.
                    invalid = Some(Ending::Broken(format!("the database sent an invalid message: {error}")));
                    break;
                }
            };
            let replaced = outcomes.observe(session, &frame, exchange, &mut events);
            if let Some(setting) = outcomes.reading_changed.take() {
                // Nothing from here on reaches the client: it is told why the session ends.
                invalid = Some(Ending::ReadingChanged(setting));
                break;
            }
            match replaced {
                Some(own) => out.unsplit(own),
                None => out.unsplit(frame),
            }
        }
        lock(exchange).last_activity = Some(Instant::now());
        for event in events {
            session.recorder.record(event).await;
        }
        if let Err(error) = wire::send(client, &out).await {
            return ended(Ending::Broken(format!("writing to the client: {error}")), exchange);
        }
        if let Some(ending) = invalid {
            break ending;
        }
    };
    if let Some((sqlstate, message)) = ending.notice(&session.grant)
        && !scanner.mid_frame()
    {
        let mut out = BytesMut::new();
        wire::error_response(&mut out, Severity::Fatal, sqlstate, &message);
        let _ = tokio::time::timeout(Duration::from_secs(1), wire::send(client, &out)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
    ended(ending, exchange)
}

/// A `ParameterStatus` that says the server no longer reads text as the guard does. The server
/// reports both settings (`GUC_REPORT`) at the start and whenever they change, however they were
/// changed (a `SET`, `set_config` in a function, an update of a view over `pg_settings`).
fn reading_changed(frame: &BytesMut) -> Option<String> {
    let mut rest = body(frame);
    let (name, value) = (cstr(&mut rest)?, cstr(&mut rest)?);
    let reads_as_guard = match name {
        "standard_conforming_strings" => value == "on",
        "client_encoding" => value == "UTF8",
        _ => true,
    };
    (!reads_as_guard).then(|| format!("{name} = {value}"))
}

fn ended(ending: Ending, exchange: &Mutex<Exchange>) -> Ended {
    Ended { statement_running: lock(exchange).busy(), ending }
}

/// Matches the target's answers to the statements awaiting them.
#[derive(Default)]
struct Outcomes {
    /// When the target last finished a statement: the next one cannot have started earlier.
    last_done: Option<Instant>,
    /// Rows sent so far for the statement at the front (for a suspended portal).
    rows: u64,
    /// A lexing setting the server reported changed away from what the guard reads (`name = value`).
    reading_changed: Option<String>,
}

impl Outcomes {
    /// Looks at one frame from the target; returns a frame to send instead of it, if any.
    fn observe(
        &mut self,
        session: &Session,
        frame: &BytesMut,
        exchange: &Mutex<Exchange>,
        events: &mut Vec<AuditEvent>,
    ) -> Option<BytesMut> {
        match tag(frame) {
            b'D' => self.rows += 1,
            b'S' => self.reading_changed = reading_changed(frame),
            b'C' => self.complete(session, exchange, events, cstr(&mut body(frame)).and_then(rows_of)),
            b'I' => self.complete(session, exchange, events, Some(0)),
            b's' => self.complete(session, exchange, events, Some(self.rows)),
            b'E' => {
                let mut copy = frame.clone();
                let Ok(Some(Message::ErrorResponse(error))) = Message::parse(&mut copy) else { return None };
                let (sqlstate, message) = error_fields(&error);
                let mut exchange = lock(exchange);
                let replaced = match exchange.expected.front() {
                    Some(Expect::Refused(sqlstate, refusal)) if message.contains(session.marker.as_str()) => {
                        let mut own = BytesMut::new();
                        wire::error_response(&mut own, Severity::Error, sqlstate, refusal);
                        Some(own)
                    }
                    _ => None,
                };
                if !matches!(exchange.expected.front(), Some(Expect::Ready) | None) {
                    let failed = exchange.expected.pop_front();
                    if let Some(Expect::Statement(pending)) = failed {
                        let error = json!({ "error": { "sqlstate": sqlstate, "message": message } });
                        events.push(self.finish(session, pending, error));
                    }
                    // The target skips what remains until the next Sync.
                    while matches!(exchange.expected.front(), Some(Expect::Statement(_) | Expect::Refused(..))) {
                        exchange.expected.pop_front();
                    }
                }
                self.last_done = Some(Instant::now());
                return replaced;
            }
            b'Z' => {
                let mut exchange = lock(exchange);
                while let Some(expect) = exchange.expected.pop_front() {
                    if matches!(expect, Expect::Ready) {
                        break;
                    }
                }
            }
            _ => {}
        }
        None
    }

    /// The statement at the front completed with `rows`.
    fn complete(
        &mut self,
        session: &Session,
        exchange: &Mutex<Exchange>,
        events: &mut Vec<AuditEvent>,
        rows: Option<u64>,
    ) {
        if let Some(pending) = pop_statement(exchange) {
            events.push(self.finish(session, pending, json!({ "rows": rows })));
        }
    }

    fn finish(&mut self, session: &Session, pending: Pending, outcome: Value) -> AuditEvent {
        let now = Instant::now();
        let started = self.last_done.map_or(pending.sent, |done| done.max(pending.sent));
        self.last_done = Some(now);
        self.rows = 0;
        let mut details = session.recorded_text(&pending.text);
        details["statement"] = json!(pending.number);
        details["params"] = json!(pending.params);
        details["duration_us"] = json!(now.duration_since(started).as_micros() as u64);
        if let (Value::Object(details), Value::Object(outcome)) = (&mut details, outcome) {
            details.extend(outcome);
        }
        session.event(EventKind::StatementExecuted, details)
    }
}

/// The statement at the front, if the next answer is for one.
fn pop_statement(exchange: &Mutex<Exchange>) -> Option<Pending> {
    let mut exchange = lock(exchange);
    match exchange.expected.front() {
        Some(Expect::Statement(_)) => match exchange.expected.pop_front() {
            Some(Expect::Statement(pending)) => Some(pending),
            _ => None,
        },
        _ => None,
    }
}

/// The row count in a CommandComplete tag (`SELECT 5`, `INSERT 0 5`, `COPY 5`…).
fn rows_of(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let command = words.next()?;
    let counted = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"];
    if counted.contains(&command) { words.next_back()?.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {

    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter, DuplexStream, ReadHalf, WriteHalf};

    use super::*;
    use crate::authority::AuthorityError;
    use crate::authority::doubles::{Appends, NoGrants};

    /// A broker that cannot be reached: the relay below records nothing.
    #[derive(Clone)]
    struct Unreachable;

    impl Appends for Unreachable {
        async fn append(&self, _: &[AuditEvent]) -> Result<(), AuthorityError> {
            Err(AuthorityError("unreachable".into()))
        }
    }

    fn session() -> Session {
        Session {
            id: Uuid::from_u128(1),
            grant: GrantId::from_uuid(Uuid::from_u128(2)),
            user: "dana".parse().unwrap(),
            resource: "demo-db".parse().unwrap(),
            role: "read".parse().unwrap(),
            allowed: Allowed::default(),
            guard: Arc::new(Guard::new()),
            recorder: Recorder::start(NoGrants(Unreachable)).0,
            redact: false,
            // The database here is a test's own bytes: records go to an authority that never
            // takes them, so nothing may wait for a commit.
            audit_before: false,
            max_statement_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(900),
            ends_at: Instant::now() + Duration::from_secs(900),
            marker: "airlock-marker".into(),
        }
    }

    type Halves = (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>);

    /// A broker whose appends wait until `open` is notified, then keep what they were given.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<tokio::sync::Notify>,
        kept: Arc<Mutex<Vec<AuditEvent>>>,
    }

    impl Appends for Gated {
        async fn append(&self, events: &[AuditEvent]) -> Result<(), AuthorityError> {
            self.open.notified().await;
            self.kept.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
    }

    /// Record before answer: a statement leaves for the database only once its
    /// `statement.started` is committed; while the store cannot take it, nothing is sent.
    #[tokio::test]
    async fn a_statement_reaches_the_database_only_once_its_record_is_committed() {
        let (mut client, mut target, (client_read, client_write), (target_read, target_write)) = connections();
        let mut ends = Ends { client_read, client_write, target_read, target_write };
        let gated = Gated::default();
        let session = Session { recorder: Recorder::start(NoGrants(gated.clone())).0, audit_before: true, ..session() };
        let (_cut, mut cut) = watch::channel(None);
        tokio::spawn(async move { relay(&session, &mut ends, &mut cut).await.ending });

        let mut query = BytesMut::new();
        frontend::query("UPDATE t SET x = 1", &mut query).unwrap();
        client.write_all(&query).await.unwrap();
        let mut sent = vec![0; query.len()];
        let early = tokio::time::timeout(Duration::from_millis(300), target.read_exact(&mut sent)).await;
        assert!(early.is_err(), "nothing reaches the database before the record is committed");
        assert!(gated.kept.lock().unwrap().is_empty());

        gated.open.notify_one();
        tokio::time::timeout(Duration::from_secs(5), target.read_exact(&mut sent)).await.unwrap().unwrap();
        assert_eq!(sent, query.to_vec());
        let kept = gated.kept.lock().unwrap().clone();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].kind, &kept[0].details["text"]),
            (EventKind::StatementStarted, &json!("UPDATE t SET x = 1"))
        );
        assert_eq!(kept[0].details["statement"], 1);
    }

    /// In-memory connections for one session: the client's and the database's far ends, and the
    /// gateway's ends of both, split.
    fn connections() -> (DuplexStream, DuplexStream, Halves, Halves) {
        let (client, gateway_client) = tokio::io::duplex(1 << 16);
        let (target, gateway_target) = tokio::io::duplex(1 << 16);
        (client, target, tokio::io::split(gateway_client), tokio::io::split(gateway_target))
    }

    /// A backend for sessions that never run a statement (nothing is sent to it).
    fn nowhere() -> Backend {
        let address =
            crate::target::TargetAddress { host: "127.0.0.1".into(), port: 9, database: "d".into(), tls: None };
        Backend { address, process_id: 0, secret_key: 0 }
    }

    /// A TLS stream keeps the tail of a write when the socket is full, until it is flushed: here
    /// the client's end holds everything until flushed. The database's answer must still arrive
    /// while the database waits for the client and sends nothing more.
    #[tokio::test]
    async fn answers_reach_a_client_whose_stream_holds_writes_until_flushed() {
        let (mut client, mut target, (client_read, client_write), (target_read, target_write)) = connections();
        let ends = Ends { client_read, client_write: BufWriter::new(client_write), target_read, target_write };
        let (_cut, mut cut) = watch::channel(None);
        let relaying = tokio::spawn(async move { relay(&session(), &mut { ends }, &mut cut).await.ending });

        let ready_for_query = b"Z\0\0\0\x05I";
        target.write_all(ready_for_query).await.unwrap();
        let mut received = [0; 6];
        let arrived = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut received)).await;
        arrived.expect("the answer reaches the client").unwrap();
        assert_eq!(&received, ready_for_query);
        relaying.abort();
    }

    /// Two sessions cut at once: both clients hear why (and see their connection close) before
    /// either database connection closes.
    #[tokio::test]
    async fn sessions_cut_together_tell_every_client_before_closing_a_database_connection() {
        let heard: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let mut cuts = Vec::new();
        let mut watchers = Vec::new();
        for _ in 0..2 {
            let (client, target, (client_read, client_write), (target_read, target_write)) = connections();
            let mut ends = Ends { client_read, client_write, target_read, target_write };
            let (cut, mut cuts_seen) = watch::channel(None);
            cuts.push(cut);
            tokio::spawn(async move {
                let session = session();
                let ended = relay(&session, &mut ends, &mut cuts_seen).await;
                close(ends, &ended, &nowhere()).await;
            });
            for (mut end, name) in [(client, "client told"), (target, "database closed")] {
                let heard = heard.clone();
                watchers.push(tokio::spawn(async move {
                    let _ = end.read_to_end(&mut Vec::new()).await;
                    heard.lock().unwrap().push(name);
                }));
            }
        }
        for cut in &cuts {
            cut.send_replace(Some(Ending::GrantEnded));
        }
        for watcher in watchers {
            watcher.await.unwrap();
        }
        let heard = heard.lock().unwrap().clone();
        assert_eq!(heard, ["client told", "client told", "database closed", "database closed"]);
    }

    /// The database answers a statement, then sends bytes that are no message: the answer still
    /// reaches the client, and then the reason the session ends.
    #[tokio::test]
    async fn answers_before_an_invalid_message_from_the_database_are_passed_on() {
        let (mut client, mut target, (client_read, client_write), (target_read, target_write)) = connections();
        let mut ends = Ends { client_read, client_write, target_read, target_write };
        let (_cut, mut cut) = watch::channel(None);
        let relaying = tokio::spawn(async move { relay(&session(), &mut ends, &mut cut).await.ending });

        let mut query = BytesMut::new();
        frontend::query("SELECT 1", &mut query).unwrap();
        client.write_all(&query).await.unwrap();
        let mut sent = vec![0; query.len()];
        target.read_exact(&mut sent).await.unwrap();
        let answer = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";
        target.write_all(&[&answer[..], b"D\0\0\0\x01"].concat()).await.unwrap();

        let ending = relaying.await.unwrap();
        assert!(matches!(&ending, Ending::Broken(why) if why.contains("invalid message")), "{ending:?}");
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert!(received.starts_with(answer), "the answer comes first: {received:?}");
        let notice = String::from_utf8_lossy(&received[answer.len()..]).into_owned();
        assert!(notice.starts_with('E') && notice.contains("08P01"), "then the reason: {notice:?}");
    }

    #[test]
    fn row_counts_come_from_command_tags() {
        assert_eq!(rows_of("SELECT 5"), Some(5));
        assert_eq!(rows_of("INSERT 0 12"), Some(12));
        assert_eq!(rows_of("COPY 1000000"), Some(1_000_000));
        assert_eq!(rows_of("CREATE TABLE"), None);
        assert_eq!(rows_of("BEGIN"), None);
    }

    #[test]
    fn bind_parameter_counts() {
        // two format codes, then three parameters
        let body = [0, 2, 0, 0, 0, 1, 0, 3, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(bind_parameters(&body), 3);
        assert_eq!(bind_parameters(&[0, 9]), 0);
        assert_eq!(bind_parameters(&[]), 0);
    }
}
