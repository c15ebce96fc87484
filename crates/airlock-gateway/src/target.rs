//! Logging in to a target database as a grant's own login role, with the password the connector
//! derived for it (SCRAM-SHA-256, or MD5/cleartext where the server's `pg_hba.conf` asks for
//! them). The user never sees this password; the gateway injects it.
//!
//! When the resource asks for TLS, every connection to the target (a session's, a cancel
//! request's) begins with PostgreSQL's `SSLRequest`; a server that answers `N` is refused before
//! anything else is sent, so nothing meant for TLS ever goes out in plaintext. The certificate is
//! checked as the resource's `tls` setting says ([`airlock_postgres::tls`], shared with the
//! connector).

use std::io;

use airlock_postgres::tls::TargetTls;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::wire::{self, WireError};

/// Where a resource's database is, and how the gateway protects its connections to it.
#[derive(Debug, Clone)]
pub struct TargetAddress {
    pub host: String,
    pub port: u16,
    pub database: String,
    /// TLS to the database, built once per resource; none for plaintext.
    pub tls: Option<TargetTls>,
}

impl TargetAddress {
    fn place(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why the target did not accept the grant's login.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot reach the database at {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error(
        "the database at {address} does not accept TLS, which its resource asks for (tls = \"require\" or \"verify-full\"); nothing was sent in plaintext"
    )]
    TlsRefused { address: String },
    #[error("TLS with the database at {address} failed: {source}")]
    Tls { address: String, source: io::Error },
    #[error("the database refused the grant's login: {message} (SQLSTATE {sqlstate})")]
    Refused { sqlstate: String, message: String },
    #[error("the database asked for an authentication method the gateway does not speak ({0})")]
    Method(String),
    #[error("the database broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl TargetError {
    /// Whether the login role may simply not exist yet (the connector creates it moments after
    /// the grant starts).
    pub fn role_may_be_pending(&self) -> bool {
        matches!(self, TargetError::Refused { sqlstate, .. } if sqlstate == "28000" || sqlstate == "28P01")
    }
}

/// A connection to the target: plain TCP (left), or TLS over it (right). Writers must flush
/// (`wire::send`): a TLS stream may hold the tail of a write until then.
pub type TargetStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Connects to the database at `address`, over TLS when its resource asks for it; a login as the
/// grant role `login_as` presents its certificate when the resource logs in with certificates.
async fn open(address: &TargetAddress, login_as: Option<&str>) -> Result<TargetStream, TargetError> {
    let place = address.place();
    let mut stream = match TcpStream::connect(&place).await {
        Ok(stream) => stream,
        Err(source) => return Err(TargetError::Connect { address: place, source }),
    };
    stream.set_nodelay(true).map_err(protocol)?;
    let Some(tls) = &address.tls else { return Ok(Either::Left(stream)) };
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    wire::send(&mut stream, &out).await.map_err(protocol)?;
    // Exactly one byte, unbuffered: anything sent after it (by someone in between, say) is then
    // read by the TLS handshake, which refuses it, and never taken as the server's (CVE-2021-23222).
    match stream.read_u8().await.map_err(protocol)? {
        b'S' => {}
        b'N' => return Err(TargetError::TlsRefused { address: place }),
        other => return Err(TargetError::Protocol(format!("answer {:?} to a TLS request", char::from(other)))),
    }
    let handshake = match login_as {
        Some(role) => tls.handshake_as(stream, role).await,
        None => tls.handshake(stream).await,
    };
    match handshake {
        Ok(stream) => Ok(Either::Right(Box::new(stream))),
        Err(source) => Err(TargetError::Tls { address: place, source }),
    }
}

/// A logged-in connection to the target, and what the server said during startup that the
/// client must see (parameter statuses, key data, the first ReadyForQuery) — still unread.
pub struct TargetSession {
    pub stream: TargetStream,
    /// Bytes already read past AuthenticationOk.
    pub pending: BytesMut,
}

/// Opens a connection to `address` and logs in as `user` with `password`.
pub async fn log_in(
    address: &TargetAddress,
    user: &str,
    password: &str,
    params: &[(String, String)],
) -> Result<TargetSession, TargetError> {
    let mut stream = open(address, Some(user)).await?;
    let mut out = BytesMut::new();
    let mut startup = vec![("user", user), ("database", address.database.as_str())];
    startup.extend(params.iter().map(|(name, value)| (name.as_str(), value.as_str())));
    frontend::startup_message(startup, &mut out).map_err(protocol)?;
    wire::send(&mut stream, &out).await.map_err(protocol)?;

    let mut input = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    loop {
        let reply = match next_message(&mut stream, &mut input).await? {
            Message::AuthenticationOk => return Ok(TargetSession { stream, pending: input }),
            Message::AuthenticationCleartextPassword => password_message(password.as_bytes())?,
            Message::AuthenticationMd5Password(body) => {
                password_message(md5_hash(user.as_bytes(), password.as_bytes(), body.salt()).as_bytes())?
            }
            Message::AuthenticationSasl(body) => {
                let mechanisms: Vec<String> =
                    body.mechanisms().map(|m| Ok(m.to_owned())).collect().map_err(protocol)?;
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(TargetError::Method(mechanisms.join(", ")));
                }
                let exchange = scram.insert(ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported()));
                let mut out = BytesMut::new();
                frontend::sasl_initial_response(SCRAM_SHA_256, exchange.message(), &mut out).map_err(protocol)?;
                out
            }
            Message::AuthenticationSaslContinue(body) => {
                let exchange = scram.as_mut().ok_or_else(|| TargetError::Protocol("SASL out of order".into()))?;
                exchange.update(body.data()).map_err(protocol)?;
                let mut out = BytesMut::new();
                frontend::sasl_response(exchange.message(), &mut out).map_err(protocol)?;
                out
            }
            Message::AuthenticationSaslFinal(body) => {
                let exchange = scram.as_mut().ok_or_else(|| TargetError::Protocol("SASL out of order".into()))?;
                exchange.finish(body.data()).map_err(protocol)?;
                continue;
            }
            Message::ErrorResponse(body) => {
                let (sqlstate, message) = error_fields(&body);
                return Err(TargetError::Refused { sqlstate, message });
            }
            Message::NoticeResponse(_) => continue,
            _ => return Err(TargetError::Method("an unknown authentication request".into())),
        };
        wire::send(&mut stream, &reply).await.map_err(protocol)?;
    }
}

fn password_message(password: &[u8]) -> Result<BytesMut, TargetError> {
    let mut out = BytesMut::new();
    frontend::password_message(password, &mut out).map_err(protocol)?;
    Ok(out)
}

fn protocol(error: impl std::fmt::Display) -> TargetError {
    TargetError::Protocol(error.to_string())
}

/// The next whole message from the server during login.
async fn next_message(stream: &mut TargetStream, input: &mut BytesMut) -> Result<Message, TargetError> {
    loop {
        if input.len() >= 5 {
            let length = i32::from_be_bytes([input[1], input[2], input[3], input[4]]);
            if !(4..=1 << 20).contains(&length) {
                return Err(TargetError::Protocol(format!("message length {length} during login")));
            }
        }
        if let Some(message) = Message::parse(input).map_err(protocol)? {
            return Ok(message);
        }
        if stream.read_buf(input).await.map_err(protocol)? == 0 {
            return Err(TargetError::Wire(WireError::Closed));
        }
    }
}

/// SQLSTATE and message of an ErrorResponse.
pub fn error_fields(body: &postgres_protocol::message::backend::ErrorResponseBody) -> (String, String) {
    let (mut sqlstate, mut message) = (String::new(), String::new());
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'C' => sqlstate = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    (sqlstate, message)
}

/// Asks the target to cancel the statement running on backend `process_id` (over TLS like the
/// session's own connection: PostgreSQL takes a cancel request after an `SSLRequest` too).
pub async fn cancel(address: &TargetAddress, process_id: i32, secret_key: i32) -> Result<(), TargetError> {
    let mut stream = open(address, None).await?;
    let mut out = BytesMut::new();
    frontend::cancel_request(process_id, secret_key, &mut out);
    wire::send(&mut stream, &out).await.map_err(protocol)?;
    // The server closes the connection once it has read the request.
    let _ = stream.read(&mut [0; 1]).await;
    Ok(())
}
