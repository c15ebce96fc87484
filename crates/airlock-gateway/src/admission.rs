//! Admitting one connection: TLS (and the device key its client certificate proves), the startup
//! packet, the credential as password, the grant's live state, the login to the target as the
//! grant's role, and then the relay. Anything that cannot be confirmed refuses the connection with
//! a PostgreSQL error (fail closed).
//!
//! Until its credential verifies, a connection is at the door ([`crate::limits`]): it holds one of
//! the gateway's places for connections logging in, it must get there before the startup
//! deadline, and a source with too many failed logins is refused before its credential is read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::credential::{self, Credential, Login, VerifyError};
use airlock_core::device::DeviceKey;
use airlock_core::ids::GrantId;
use airlock_postgres::roles::role_name;
use bytes::{Buf, BytesMut};
use serde_json::json;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout_at};
use uuid::Uuid;

use crate::authority::Authority;
use crate::gateway::Shared;
use crate::limits::{Limited, Source, spoken};
use crate::registry::{Backend, CancelKey};
use crate::relay::{self, Ends, Session};
use crate::target::{self, TargetError, TargetSession};
use crate::tls;
use crate::wire::{self, Scanner, Severity, Startup, WireError, body, cstr, tag};

/// Startup parameters passed on to the target; any other is refused, because PostgreSQL applies
/// startup parameters as settings (`role`, `session_authorization`, `options=-c …`).
const PASSED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];
/// How long a new grant's login role may take to appear on the target.
const ROLE_PENDING_FOR: Duration = Duration::from_secs(5);
const PASSWORD_LIMIT: usize = 16 * 1024;
/// How long a connection refused at the door (over the cap of connections logging in) is given
/// to send its first packet and to read the answer.
const REFUSAL_LASTS: Duration = Duration::from_secs(2);
/// How long telling a client why it is closed may take, at most.
const TELLING_LASTS: Duration = Duration::from_secs(1);

/// The value of startup parameter `name`, if the client sent it.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// A connection refused before its session began: what the client and the audit are told.
struct Refused {
    sqlstate: &'static str,
    message: String,
    kind: Refusal,
}

/// What a refusal leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// An audit record.
    Recorded,
    /// An audit record, and a failed login counted against the source.
    FailedLogin,
    /// A refusal counted in the source's limit, recorded in its summary only.
    Limited,
}

fn refuse(sqlstate: &'static str, message: impl Into<String>) -> Refused {
    Refused { sqlstate, message: message.into(), kind: Refusal::Recorded }
}

/// Refuses `source` if it has failed too often; counts the refusal in its limit.
fn refuse_if_limited<A>(shared: &Shared<A>, source: Source) -> Result<(), Refused> {
    let limited = shared.failures().check(source, Instant::now());
    let Err(Limited { until }) = limited else { return Ok(()) };
    let left = until.saturating_duration_since(Instant::now());
    let left = Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0));
    let message = format!(
        "airlock: too many failed logins from `{source}`; logins from it are refused for {} more",
        spoken(left)
    );
    Err(Refused { sqlstate: "53400", message, kind: Refusal::Limited })
}

/// A connection that is logging in: its place among those (given back when dropped), and the
/// instant by which its credential must have verified.
struct AtTheDoor {
    deadline: Instant,
    _place: OwnedSemaphorePermit,
}

/// How a connection opens.
enum Opening {
    Cancel(CancelKey),
    Plain(Vec<(String, String)>),
    /// TLS was agreed; the startup message follows inside it.
    Tls(tokio_rustls::TlsAcceptor),
}

/// What carries a client's messages.
#[derive(Debug, Clone, Copy)]
enum Channel {
    Plain,
    /// TLS, with the key of the client certificate the client sent, if it sent one (the
    /// handshake proved the client holds that key).
    Tls {
        certificate: Option<CertificateKey>,
    },
}

/// The key of a client certificate.
#[derive(Debug, Clone, Copy)]
enum CertificateKey {
    Device(DeviceKey),
    /// Not an Ed25519 key, so no device's.
    Other,
}

impl Channel {
    /// A TLS connection after its handshake, with the key of the client certificate it proved.
    fn of(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        let end_entity = stream.get_ref().1.peer_certificates().and_then(<[_]>::first);
        let key = |cert| tls::device_key(cert).map_or(CertificateKey::Other, CertificateKey::Device);
        Channel::Tls { certificate: end_entity.map(key) }
    }

    /// The device key this connection proved.
    fn device(self) -> Option<DeviceKey> {
        match self {
            Channel::Tls { certificate: Some(CertificateKey::Device(key)) } => Some(key),
            _ => None,
        }
    }
}

/// Serves one accepted connection to its end. `place` is its place among the connections
/// logging in; it has [`Settings::startup_timeout`](crate::gateway::Settings) from now for its
/// credential to verify.
pub async fn serve_connection<A: Authority>(
    shared: Arc<Shared<A>>,
    mut socket: TcpStream,
    peer: SocketAddr,
    place: OwnedSemaphorePermit,
) {
    let _ = socket.set_nodelay(true);
    let door = AtTheDoor { deadline: Instant::now() + shared.settings.startup_timeout, _place: place };
    let opening = match timeout_at(door.deadline, negotiate(&shared, &mut socket)).await {
        Ok(Ok(opening)) => opening,
        Ok(Err(error)) => return tracing::debug!(%peer, %error, "connection closed during startup"),
        Err(_) => return timed_out(peer, "before its startup message"),
    };
    match opening {
        Opening::Cancel(key) => {
            drop(door);
            cancel(&shared, key).await;
        }
        Opening::Plain(params) => admit(&shared, socket, params, peer, Channel::Plain, door).await,
        Opening::Tls(acceptor) => {
            let mut stream = match timeout_at(door.deadline, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => return timed_out(peer, "during the TLS handshake"),
            };
            let channel = Channel::of(&stream);
            match timeout_at(door.deadline, wire::read_startup(&mut stream)).await {
                Ok(Ok(Startup::Params(params))) => admit(&shared, stream, params, peer, channel, door).await,
                Ok(Ok(Startup::Cancel { process_id, secret_key })) => {
                    drop(door);
                    cancel(&shared, CancelKey { process_id, secret_key }).await;
                }
                Ok(Ok(_)) => tracing::debug!(%peer, "unexpected startup packet inside TLS"),
                Ok(Err(error)) => tracing::debug!(%peer, %error, "connection closed during startup"),
                Err(_) => timed_out(peer, "before its startup message"),
            }
        }
    }
}

/// Counts and logs a connection closed at the startup deadline without a word (it had not sent a
/// startup message to answer).
fn timed_out(peer: SocketAddr, when: &str) {
    airlock_broker::metrics::gateway_login_refused("startup_timeout");
    tracing::debug!(%peer, "no login in time ({when}); connection closed");
}

/// Turns away a connection over the cap of connections logging in: answers its first packet — a
/// startup message, or an SSLRequest, as PostgreSQL answers one when it cannot start a backend —
/// with `53300`, passes a cancel request on, and closes. The first packet is read, and the client
/// left to close first, so that closing does not reset the connection before the client reads
/// the answer. All of it within [`REFUSAL_LASTS`].
pub async fn refuse_at_the_door<A: Authority>(
    shared: Arc<Shared<A>>,
    mut socket: TcpStream,
    turn: OwnedSemaphorePermit,
) {
    let refusal = async {
        match wire::read_startup(&mut socket).await {
            Ok(Startup::Cancel { process_id, secret_key }) => {
                return cancel(&shared, CancelKey { process_id, secret_key }).await;
            }
            Ok(_) => {}
            Err(_) => return,
        }
        let mut out = BytesMut::new();
        let message = "airlock: too many connections waiting to log in; try again in a moment";
        wire::error_response(&mut out, Severity::Fatal, "53300", message);
        if wire::send(&mut socket, &out).await.is_err() {
            return;
        }
        let _ = socket.shutdown().await;
        let mut sink = [0u8; 512];
        while matches!(socket.read(&mut sink).await, Ok(1..)) {}
    };
    let _ = tokio::time::timeout(REFUSAL_LASTS, refusal).await;
    drop(turn);
}

/// Reads startup packets, answering encryption requests, until a startup message, a cancel
/// request or an agreed TLS handshake.
async fn negotiate<A: Authority>(shared: &Shared<A>, socket: &mut TcpStream) -> Result<Opening, WireError> {
    loop {
        match wire::read_startup(socket).await? {
            Startup::Ssl => match &shared.tls {
                Some(acceptor) => {
                    socket.write_all(b"S").await?;
                    return Ok(Opening::Tls(acceptor.clone()));
                }
                None => socket.write_all(b"N").await?,
            },
            Startup::GssEncryption => socket.write_all(b"N").await?,
            Startup::Cancel { process_id, secret_key } => {
                return Ok(Opening::Cancel(CancelKey { process_id, secret_key }));
            }
            Startup::Params(params) => return Ok(Opening::Plain(params)),
        }
    }
}

async fn cancel<A: Authority>(shared: &Shared<A>, key: CancelKey) {
    // PostgreSQL answers a cancel request with nothing, whether or not it matched.
    if let Some(backend) = shared.registry.backend(key)
        && let Err(error) = backend.cancel().await
    {
        tracing::warn!(%error, "cannot pass a cancel request on to the database");
    }
}

/// Admits a client that has sent its startup message, or turns it away.
async fn admit<A, S>(
    shared: &Arc<Shared<A>>,
    mut client: S,
    params: Vec<(String, String)>,
    peer: SocketAddr,
    channel: Channel,
    door: AtTheDoor,
) where
    A: Authority,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let checked = timeout_at(door.deadline, check_credential(shared, &mut client, &params, peer, channel)).await;
    let credential = match checked {
        Ok(Ok(credential)) => credential,
        Ok(Err(Some(refused))) if refused.kind == Refusal::Limited => {
            airlock_broker::metrics::gateway_login_refused("rate_limited");
            return tell(client, refused.sqlstate, &refused.message).await;
        }
        Ok(Err(Some(refused))) => {
            if refused.kind == Refusal::FailedLogin {
                shared.failures().failed(Source::of(peer.ip()), Instant::now());
            }
            let details = json!({ "claimed_user": param(&params, "user").unwrap_or_default() });
            return turn_away(shared, client, refused, "gateway", peer, details).await;
        }
        Ok(Err(None)) => return,
        Err(_) => {
            timed_out(peer, "waiting for a credential");
            let message = format!("airlock: no login within {}", spoken(shared.settings.startup_timeout));
            return tell(client, "57014", &message).await;
        }
    };
    // In: the place at the door is given back.
    drop(door);
    run(shared, client, credential, &params, peer).await;
}

/// Tells the client why it is closed, without an audit record, and closes.
async fn tell(mut client: impl AsyncWrite + Unpin, sqlstate: &str, message: &str) {
    let mut out = BytesMut::new();
    wire::error_response(&mut out, Severity::Fatal, sqlstate, message);
    let telling = async {
        let _ = wire::send(&mut client, &out).await;
        let _ = client.shutdown().await;
    };
    let _ = tokio::time::timeout(TELLING_LASTS, telling).await;
}

/// Records the refusal and tells the client.
async fn turn_away<A: Authority>(
    shared: &Shared<A>,
    mut client: impl AsyncWrite + Unpin,
    refused: Refused,
    actor: &str,
    peer: SocketAddr,
    mut details: serde_json::Value,
) {
    details["client"] = json!(peer.to_string());
    details["reason"] = json!(refused.message);
    let at = OffsetDateTime::now_utc();
    shared.recorder.record(AuditEvent { kind: EventKind::SessionRefused, actor: actor.to_owned(), at, details }).await;
    let mut out = BytesMut::new();
    wire::error_response(&mut out, Severity::Fatal, refused.sqlstate, &refused.message);
    let _ = wire::send(&mut client, &out).await;
    let _ = client.shutdown().await;
}

/// Checks the client's source, TLS, parameters and credential (with the device key its client
/// certificate proved). `Err(None)` means the client left.
///
/// A source with too many failed logins is refused before the password is asked for, and again
/// before it is verified: connections that all got their password in before the limit began are
/// refused too, not verified and recorded one by one.
async fn check_credential<A, S>(
    shared: &Shared<A>,
    client: &mut S,
    params: &[(String, String)],
    peer: SocketAddr,
    channel: Channel,
) -> Result<Credential, Option<Refused>>
where
    A: Authority,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let source = Source::of(peer.ip());
    refuse_if_limited(shared, source).map_err(Some)?;
    if matches!(channel, Channel::Plain) && shared.settings.require_tls {
        return Err(Some(refuse(
            "28000",
            "the Airlock gateway accepts only TLS connections; connect with sslmode=require",
        )));
    }
    if let Some((name, _)) = params
        .iter()
        .find(|(name, _)| !matches!(name.as_str(), "user" | "database") && !PASSED_PARAMETERS.contains(&name.as_str()))
    {
        return Err(Some(refuse(
            "0A000",
            format!(
                "airlock: the startup parameter `{name}` is not accepted through the gateway; use SET after connecting"
            ),
        )));
    }
    if let Some(encoding) = param(params, "client_encoding")
        && !safe_encoding(encoding)
    {
        return Err(Some(refuse(
            "0A000",
            format!("airlock: client_encoding `{encoding}` is not accepted through the gateway; use UTF8"),
        )));
    }
    let mut out = BytesMut::new();
    wire::authentication(&mut out, 3);
    wire::send(client, &out).await.map_err(|_| None)?;
    let frame = match wire::read_frame(client, PASSWORD_LIMIT).await {
        Ok(frame) if tag(&frame) == b'p' => frame,
        Ok(_) => return Err(Some(refuse("08P01", "expected a password message"))),
        Err(WireError::Closed) => return Err(None),
        Err(error) => return Err(Some(refuse("08P01", error.to_string()))),
    };
    let password = cstr(&mut body(&frame)).unwrap_or_default();
    refuse_if_limited(shared, source).map_err(Some)?;
    let user = param(params, "user").unwrap_or_default();
    let login = Login { user, password, source: Some(peer.ip()), device: channel.device() };
    let credential =
        credential::verify(&shared.verifier.public_key, &login, OffsetDateTime::now_utc()).map_err(|error| {
            Some(Refused { sqlstate: "28P01", message: verify_refusal(&error, channel), kind: Refusal::FailedLogin })
        })?;
    Ok(credential)
}

/// What the client is told when its credential is refused; a certificate for a key that is no
/// device's is named as such rather than as no certificate.
fn verify_refusal(error: &VerifyError, channel: Channel) -> String {
    match (error, channel) {
        (VerifyError::NoDevice, Channel::Tls { certificate: Some(CertificateKey::Other) }) => {
            "airlock: the credential is bound to a device and this connection's client certificate is not for a \
             device key (Ed25519); give libpq the sslcert and sslkey `airlock credentials` names"
                .to_owned()
        }
        _ => format!("airlock: {error}"),
    }
}

/// The startup parameters sent to the target: the client's passed ones, with the two settings the
/// guard reads statements by pinned (startup parameters override role and database defaults,
/// so `ALTER ROLE … SET standard_conforming_strings = off` cannot undo them).
fn target_parameters(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut passed: Vec<(String, String)> = params
        .iter()
        .filter(|(name, _)| PASSED_PARAMETERS.contains(&name.as_str()) && name != "client_encoding")
        .cloned()
        .collect();
    let encoding = param(params, "client_encoding").unwrap_or("UTF8");
    passed.push(("client_encoding".to_owned(), encoding.to_owned()));
    passed.push(("standard_conforming_strings".to_owned(), "on".to_owned()));
    passed
}

/// Whether a client encoding keeps every ASCII byte meaning itself, as the guard reads text.
/// The refused ones (client-only encodings of East Asian scripts) have multibyte characters whose
/// second byte can be a quote or a backslash.
fn safe_encoding(name: &str) -> bool {
    let name: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_uppercase();
    !matches!(
        name.as_str(),
        "SJIS"
            | "SHIFTJIS"
            | "SHIFTJIS2004"
            | "BIG5"
            | "GBK"
            | "UHC"
            | "GB18030"
            | "JOHAB"
            | "WIN932"
            | "WIN936"
            | "WIN949"
            | "WIN950"
            | "CP932"
            | "CP936"
            | "CP949"
            | "CP950"
    )
}

/// Confirms the grant, logs in to the target and relays until the session ends.
async fn run<A, S>(
    shared: &Arc<Shared<A>>,
    mut client: S,
    credential: Credential,
    params: &[(String, String)],
    peer: SocketAddr,
) where
    A: Authority,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (registration, mut cut) = shared.registry.register(credential.grant);
    let admitted = admit_grant(shared, &credential, params).await;
    let (target, address, allowed, ends_at, audit_before) = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            let actor = credential.holder.as_str();
            return turn_away(shared, client, refused, actor, peer, json!({ "grant": credential.grant })).await;
        }
    };
    let TargetSession { stream, pending } = target;
    let (mut target_read, target_write) = tokio::io::split(stream);
    let session = Session {
        id: Uuid::now_v7(),
        grant: credential.grant,
        user: credential.holder.clone(),
        resource: credential.resource.clone(),
        role: credential.role.clone(),
        allowed,
        guard: shared.guard.clone(),
        recorder: shared.recorder.clone(),
        redact: shared.settings.redact_literals,
        audit_before,
        max_statement_bytes: shared.settings.max_statement_bytes,
        idle_timeout: shared.settings.idle_timeout,
        ends_at,
        marker: format!("airlock_refused_{}", Uuid::new_v4().simple()),
    };
    let started = match greet(&mut client, &mut target_read, pending, registration.key).await {
        Ok(started) => started,
        Err(error) => {
            tracing::debug!(%error, "the session ended during startup");
            return;
        }
    };
    let Some((process_id, secret_key, leftover)) = started else { return };
    let backend = Backend { address, process_id, secret_key };
    shared.registry.set_backend(registration.key, backend.clone());
    let begun = std::time::Instant::now();
    let started = json!({ "client": peer.to_string(), "gateway": shared.name });
    shared.recorder.record(session.event(EventKind::SessionStarted, started)).await;
    let (client_read, client_write) = tokio::io::split(client);
    let target_read = Prefixed { prefix: leftover, inner: target_read };
    let mut ends = Ends { client_read, client_write, target_read, target_write };
    let ended = relay::relay(&session, &mut ends, &mut cut).await;
    let details = json!({ "reason": ended.ending.code(), "duration_ms": begun.elapsed().as_millis() as u64 });
    shared.recorder.record(session.event(EventKind::SessionEnded, details)).await;
    relay::close(ends, &ended, &backend).await;
    drop(registration);
}

type Admitted = (TargetSession, crate::target::TargetAddress, crate::guard::Allowed, Instant, bool);

/// Checks with the broker that the credential's grant is live and matches it, and logs in to the
/// target as the grant's role.
async fn admit_grant<A: Authority>(
    shared: &Shared<A>,
    credential: &Credential,
    params: &[(String, String)],
) -> Result<Admitted, Refused> {
    let resource = shared.targets.get(&credential.resource).ok_or_else(|| {
        refuse("3D000", format!("airlock: this gateway serves no database for resource `{}`", credential.resource))
    })?;
    let database = param(params, "database").unwrap_or(credential.holder.as_str());
    if database != resource.address.database && database != credential.resource.as_str() {
        return Err(refuse(
            "3D000",
            format!(
                "airlock: database `{database}` is not the database of resource `{}` (`{}`)",
                credential.resource, resource.address.database
            ),
        ));
    }
    let allowed = resource.roles.get(&credential.role).cloned().ok_or_else(|| {
        refuse("28000", format!("airlock: resource `{}` has no role `{}`", credential.resource, credential.role))
    })?;
    let grant = shared.authority.live_grant(credential.grant).await.map_err(|error| {
        refuse("57P03", format!("airlock: cannot confirm that grant {} is live ({error}); refused", credential.grant))
    })?;
    let grant = grant.ok_or_else(|| refuse("28000", format!("airlock: grant {} has ended", credential.grant)))?;
    if grant.holder != credential.holder || grant.resource != credential.resource || grant.role != credential.role {
        return Err(refuse("28000", "airlock: the credential does not match its grant"));
    }
    let ends_at = instant_of(grant.ends_at.min(credential.expires_at));
    let passed = target_parameters(params);
    let target = log_in(shared, &resource.address, &credential.grant, &passed).await?;
    Ok((target, resource.address.clone(), allowed, ends_at, resource.audit_before))
}

/// Logs in as the grant's role, waiting a little for the connector to create it.
async fn log_in<A: Authority>(
    shared: &Shared<A>,
    address: &crate::target::TargetAddress,
    grant: &GrantId,
    params: &[(String, String)],
) -> Result<TargetSession, Refused> {
    let (user, password) = (role_name(grant), shared.role_key.password(grant));
    let give_up = Instant::now() + ROLE_PENDING_FOR;
    loop {
        match target::log_in(address, &user, &password, params).await {
            Ok(session) => return Ok(session),
            Err(error) if error.role_may_be_pending() && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(TargetError::Refused { sqlstate, message }) => {
                tracing::warn!(%sqlstate, %message, "the database refused a grant's login");
                return Err(refuse("28000", format!("airlock: the database refused the grant's login: {message}")));
            }
            Err(error) => return Err(refuse("08006", format!("airlock: {error}"))),
        }
    }
}

/// The `Instant` at which wall-clock time `at` arrives.
fn instant_of(at: OffsetDateTime) -> Instant {
    let left = at - OffsetDateTime::now_utc();
    Instant::now() + Duration::try_from(left).unwrap_or(Duration::ZERO)
}

/// Tells the client it is in, and passes on what the target said at startup (settings and the
/// first ReadyForQuery), with the gateway's cancel key in place of the target's. Returns the
/// target's key and any bytes read past the first ReadyForQuery; `None` if the target refused.
async fn greet<S: AsyncWrite + Unpin>(
    client: &mut S,
    target: &mut (impl AsyncRead + Unpin),
    mut input: BytesMut,
    key: CancelKey,
) -> Result<Option<(i32, i32, BytesMut)>, WireError> {
    let mut out = BytesMut::new();
    wire::authentication(&mut out, 0);
    let mut scanner = Scanner::new(relay::MAX_CLIENT_MESSAGE, b"");
    let mut backend = (0, 0);
    loop {
        while let Some(piece) = scanner.next(&mut input)? {
            let frame = piece.into_bytes();
            match tag(&frame) {
                b'K' => {
                    let mut fields = body(&frame);
                    if fields.len() >= 8 {
                        backend = (fields.get_i32(), fields.get_i32());
                    }
                    wire::backend_key_data(&mut out, key.process_id, key.secret_key);
                }
                b'Z' => {
                    out.unsplit(frame);
                    wire::send(client, &out).await?;
                    return Ok(Some((backend.0, backend.1, input)));
                }
                b'E' => {
                    out.unsplit(frame);
                    wire::send(client, &out).await?;
                    return Ok(None);
                }
                _ => out.unsplit(frame),
            }
        }
        if target.read_buf(&mut input).await? == 0 {
            return Err(WireError::Closed);
        }
    }
}

/// A reader that first yields bytes already read.
struct Prefixed<R> {
    prefix: BytesMut,
    inner: R,
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let take = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(take));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
