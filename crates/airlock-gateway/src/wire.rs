//! The PostgreSQL wire protocol, as far as a relay needs it: cutting a byte stream into frames
//! without trusting the peer's lengths, reading startup packets, and writing the few messages the
//! gateway speaks itself (authentication requests, errors, key data).
//!
//! Written by hand on purpose. `postgres-protocol` parses only what a server sends and
//! serialises only what a client sends; `pgwire` decodes every message into owned values, and its
//! 0.42 decoders panic on malformed lengths. A relay needs less: a frame's tag and bounds, a few
//! fields of a few messages, and passing everything else on untouched (and in pieces, when a frame
//! is larger than is worth holding).

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames up to this size are handed over whole; larger pass-through frames are streamed.
pub const STREAM_ABOVE: usize = 64 * 1024;
/// The largest startup packet accepted (PostgreSQL's own limit).
const MAX_STARTUP: usize = 10_000;

const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// Why bytes from a peer could not be read as the protocol.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid message length {length} for message type {tag:?}")]
    Length { tag: char, length: i64 },
    #[error("message type {tag:?} of {length} bytes is larger than the gateway accepts ({limit} bytes)")]
    TooLarge { tag: char, length: usize, limit: usize },
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unsupported protocol version {major}.{minor}")]
    Version { major: i32, minor: i32 },
}

/// The first packet of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEncryption,
    Cancel { process_id: i32, secret_key: i32 },
    Params(Vec<(String, String)>),
}

/// Writes all of `bytes` and flushes them. A TLS stream may still hold the tail of a completed
/// write until it is flushed; a relay that then waits for its peer would never send that tail, and
/// a client waiting for it would hang.
pub async fn send(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Reads a startup packet (length, code, body); no message type byte comes first.
pub async fn read_startup(stream: &mut (impl AsyncRead + Unpin)) -> Result<Startup, WireError> {
    let length = stream.read_i32().await.map_err(eof_is_closed)?;
    if !(8..=MAX_STARTUP as i32).contains(&length) {
        return Err(WireError::Length { tag: '\0', length: length.into() });
    }
    let mut body = vec![0; length as usize - 4];
    stream.read_exact(&mut body).await.map_err(eof_is_closed)?;
    let mut body = &body[..];
    let code = body.get_i32();
    match code {
        SSL_REQUEST => Ok(Startup::Ssl),
        GSSENC_REQUEST => Ok(Startup::GssEncryption),
        CANCEL_REQUEST if body.len() == 8 => {
            Ok(Startup::Cancel { process_id: body.get_i32(), secret_key: body.get_i32() })
        }
        CANCEL_REQUEST => Err(WireError::Malformed("cancel request")),
        PROTOCOL_3_0 => parse_params(body).map(Startup::Params),
        other => Err(WireError::Version { major: other >> 16, minor: other & 0xffff }),
    }
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut params = Vec::new();
    loop {
        let name = cstr(&mut body).ok_or(WireError::Malformed("startup packet"))?;
        if name.is_empty() {
            return if body.is_empty() { Ok(params) } else { Err(WireError::Malformed("startup packet")) };
        }
        let value = cstr(&mut body).ok_or(WireError::Malformed("startup packet"))?;
        params.push((name.to_owned(), value.to_owned()));
    }
}

fn eof_is_closed(error: std::io::Error) -> WireError {
    if error.kind() == std::io::ErrorKind::UnexpectedEof { WireError::Closed } else { WireError::Io(error) }
}

/// Takes a NUL-terminated UTF-8 string off the front of `body`.
pub fn cstr<'a>(body: &mut &'a [u8]) -> Option<&'a str> {
    let end = body.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&body[..end]).ok()?;
    *body = &body[end + 1..];
    Some(text)
}

/// One piece of a message stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A whole frame: tag, length and body.
    Frame(BytesMut),
    /// Part of a large frame that is passed on as it arrives.
    Stream(BytesMut),
}

impl Piece {
    pub fn into_bytes(self) -> BytesMut {
        match self {
            Piece::Frame(bytes) | Piece::Stream(bytes) => bytes,
        }
    }
}

/// The tag of a whole frame.
pub fn tag(frame: &[u8]) -> u8 {
    frame[0]
}

/// The body of a whole frame (after tag and length).
pub fn body(frame: &[u8]) -> &[u8] {
    &frame[5..]
}

/// Room a [`ReadBuffer`] offers a read, at least and at most.
const READ_AT_LEAST: usize = 2 * 1024;
const READ_AT_MOST: usize = 16 * 1024;

/// Where a relay reads one direction of a session into. It offers each read room for about what
/// the reads before brought: a read that fills it doubles the next one's (bulk results stream in
/// 16 KiB reads), one that brings less than a quarter halves it. When the buffer is empty and far
/// larger than that, it is given back, so an idle session holds a few KiB, not what its last
/// large result needed.
#[derive(Debug)]
pub struct ReadBuffer {
    bytes: BytesMut,
    room: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        Self { bytes: BytesMut::new(), room: READ_AT_LEAST }
    }
}

impl ReadBuffer {
    /// The buffer, with room for the next read.
    pub fn for_read(&mut self) -> &mut BytesMut {
        // Reserving first: an empty view may take back its whole allocation (after a large
        // frame was split off and sent), which is then seen and given back.
        self.bytes.reserve(self.room);
        if self.bytes.is_empty() && self.bytes.capacity() > 2 * self.room {
            self.bytes = BytesMut::with_capacity(self.room);
        }
        &mut self.bytes
    }

    /// Takes note that the last read brought `read` bytes; returns what has been read and not
    /// yet taken.
    pub fn after_read(&mut self, read: usize) -> &mut BytesMut {
        if read >= self.room {
            self.room = (self.room * 2).min(READ_AT_MOST);
        } else if read < self.room / 4 {
            self.room = (self.room / 2).max(READ_AT_LEAST);
        }
        &mut self.bytes
    }
}

/// Cuts a message stream into frames, refusing impossible lengths before anything else.
#[derive(Debug)]
pub struct Scanner {
    /// Bytes still to come of a frame being streamed.
    streaming: usize,
    /// Frames of other types are held whole, up to this size.
    limit: usize,
    /// Frame types that may be streamed when large.
    streamable: &'static [u8],
}

impl Scanner {
    pub fn new(limit: usize, streamable: &'static [u8]) -> Self {
        Self { streaming: 0, limit, streamable }
    }

    /// Whether the scanner is in the middle of a streamed frame.
    pub fn mid_frame(&self) -> bool {
        self.streaming > 0
    }

    /// Takes the next piece off `buffer`; `None` means more bytes are needed.
    pub fn next(&mut self, buffer: &mut BytesMut) -> Result<Option<Piece>, WireError> {
        if self.streaming > 0 {
            if buffer.is_empty() {
                return Ok(None);
            }
            let take = self.streaming.min(buffer.len());
            self.streaming -= take;
            return Ok(Some(Piece::Stream(buffer.split_to(take))));
        }
        if buffer.len() < 5 {
            return Ok(None);
        }
        let tag = buffer[0];
        let length = i32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]);
        if length < 4 {
            return Err(WireError::Length { tag: char::from(tag), length: length.into() });
        }
        let total = 1 + length as usize;
        let streamable = self.streamable.contains(&tag);
        if streamable && total > STREAM_ABOVE {
            let take = buffer.len().min(total);
            self.streaming = total - take;
            return Ok(Some(Piece::Stream(buffer.split_to(take))));
        }
        if !streamable && total > self.limit {
            return Err(WireError::TooLarge { tag: char::from(tag), length: total, limit: self.limit });
        }
        if buffer.len() >= total {
            return Ok(Some(Piece::Frame(buffer.split_to(total))));
        }
        buffer.reserve(total - buffer.len());
        Ok(None)
    }
}

/// Starts a frame of type `tag`; [`finish`] fills in its length.
fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let length = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&length.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, text: &str) {
    // A NUL inside would end the field early; the gateway's own texts never hold one.
    out.put_slice(text.replace('\0', " ").as_bytes());
    out.put_u8(0);
}

/// How serious an error the gateway reports is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

/// An ErrorResponse with a SQLSTATE and a message.
pub fn error_response(out: &mut BytesMut, severity: Severity, sqlstate: &str, message: &str) {
    let severity = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let at = begin(out, b'E');
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', sqlstate), (b'M', message)] {
        out.put_u8(field);
        put_cstr(out, value);
    }
    out.put_u8(0);
    finish(out, at);
}

/// An authentication request: `3` asks for a cleartext password, `0` says all is well.
pub fn authentication(out: &mut BytesMut, code: i32) {
    let at = begin(out, b'R');
    out.put_i32(code);
    finish(out, at);
}

/// BackendKeyData: what a client quotes to cancel a running statement.
pub fn backend_key_data(out: &mut BytesMut, process_id: i32, secret_key: i32) {
    let at = begin(out, b'K');
    out.put_i32(process_id);
    out.put_i32(secret_key);
    finish(out, at);
}

/// Reads a whole frame from `stream` (used before the relay starts, when only a few small
/// messages are exchanged).
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin), limit: usize) -> Result<BytesMut, WireError> {
    let tag = stream.read_u8().await.map_err(eof_is_closed)?;
    let length = stream.read_i32().await.map_err(eof_is_closed)?;
    if length < 4 {
        return Err(WireError::Length { tag: char::from(tag), length: length.into() });
    }
    let total = 1 + length as usize;
    if total > limit {
        return Err(WireError::TooLarge { tag: char::from(tag), length: total, limit });
    }
    let mut frame = BytesMut::with_capacity(total);
    frame.put_u8(tag);
    frame.put_i32(length);
    frame.resize(total, 0);
    stream.read_exact(&mut frame[5..]).await.map_err(eof_is_closed)?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Reads `n` bytes into `reader` as a socket would: no more than the room it offers.
    fn read(reader: &mut ReadBuffer, n: usize) -> usize {
        let buffer = reader.for_read();
        let n = n.min(buffer.capacity() - buffer.len());
        buffer.put_bytes(b'x', n);
        reader.after_read(n);
        n
    }

    #[test]
    fn read_room_grows_with_full_reads_and_an_idle_buffer_is_given_back() {
        let mut reader = ReadBuffer::default();
        read(&mut reader, 100);
        assert!(reader.bytes.capacity() < 4 * 1024, "small reads get little room");
        let mut largest = 0;
        for _ in 0..8 {
            largest = largest.max(read(&mut reader, usize::MAX));
        }
        assert!(largest >= READ_AT_MOST, "full reads grow the room to {READ_AT_MOST}, got {largest}");
        assert!(reader.bytes.len() > 8 * READ_AT_LEAST, "what was read stays until taken");
        reader.bytes.clear();
        for _ in 0..4 {
            read(&mut reader, 10);
            reader.bytes.clear();
        }
        assert!(reader.bytes.capacity() <= 4 * READ_AT_LEAST, "an idle buffer holds {} bytes", reader.bytes.capacity());

        // A large frame held whole, split off and sent: the allocation behind it is given back.
        let buffer = reader.for_read();
        buffer.reserve(1 << 20);
        buffer.put_bytes(b'x', 1 << 20);
        drop(reader.after_read(1 << 20).split_to(1 << 20));
        assert!(reader.for_read().capacity() <= 4 * READ_AT_MOST, "after a large frame: {}", reader.bytes.capacity());
    }

    #[test]
    fn frames_come_whole_and_split_reads_wait() {
        let mut scanner = Scanner::new(1024, b"d");
        let mut bytes = frame(b'Q', b"select 1\0");
        bytes.extend(frame(b'S', b""));
        let mut buffer = BytesMut::from(&bytes[..7]);
        assert_eq!(scanner.next(&mut buffer).unwrap(), None);
        buffer.extend_from_slice(&bytes[7..]);
        let first = scanner.next(&mut buffer).unwrap().unwrap().into_bytes();
        assert_eq!((tag(&first), body(&first)), (b'Q', &b"select 1\0"[..]));
        let second = scanner.next(&mut buffer).unwrap().unwrap().into_bytes();
        assert_eq!((tag(&second), body(&second)), (b'S', &b""[..]));
        assert_eq!(scanner.next(&mut buffer).unwrap(), None);
    }

    #[test]
    fn lengths_below_four_are_refused_before_decoding() {
        // The input that made pgwire 0.42's CopyData decoder panic.
        let mut buffer = BytesMut::from(&[0x64, 0, 0, 0, 0][..]);
        let error = Scanner::new(1024, b"d").next(&mut buffer).unwrap_err();
        assert!(matches!(error, WireError::Length { tag: 'd', length: 0 }), "{error:?}");
        let mut negative = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(Scanner::new(1024, b"").next(&mut negative).is_err());
    }

    #[test]
    fn large_frames_are_streamed_or_refused_by_type() {
        let big = frame(b'd', &vec![7; STREAM_ABOVE * 2]);
        let mut scanner = Scanner::new(1024, b"d");
        let mut buffer = BytesMut::from(&big[..1000]);
        let Piece::Stream(first) = scanner.next(&mut buffer).unwrap().unwrap() else { panic!("not streamed") };
        assert_eq!(first.len(), 1000);
        assert!(scanner.mid_frame());
        buffer.extend_from_slice(&big[1000..]);
        buffer.extend(frame(b'c', b""));
        let Piece::Stream(rest) = scanner.next(&mut buffer).unwrap().unwrap() else { panic!("not streamed") };
        assert_eq!(rest.len(), big.len() - 1000);
        assert!(!scanner.mid_frame());
        assert!(matches!(scanner.next(&mut buffer).unwrap(), Some(Piece::Frame(f)) if tag(&f) == b'c'));

        let query = frame(b'Q', &vec![b'x'; 2048]);
        let mut buffer = BytesMut::from(&query[..10]);
        let error = Scanner::new(1024, b"d").next(&mut buffer).unwrap_err();
        assert!(matches!(error, WireError::TooLarge { tag: 'Q', .. }), "{error:?}");
    }

    #[tokio::test]
    async fn startup_packets() {
        let mut ssl = &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..];
        assert_eq!(read_startup(&mut ssl).await.unwrap(), Startup::Ssl);
        let mut packet = Vec::new();
        let body = b"\0\x03\0\0user\0alice\0database\0demo\0\0";
        packet.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        packet.extend_from_slice(body);
        let params = read_startup(&mut &packet[..]).await.unwrap();
        let expected = vec![("user".to_owned(), "alice".to_owned()), ("database".to_owned(), "demo".to_owned())];
        assert_eq!(params, Startup::Params(expected));
        let huge = (MAX_STARTUP as i32 + 1).to_be_bytes();
        assert!(matches!(read_startup(&mut &huge[..]).await, Err(WireError::Length { .. })));
        let truncated = &packet[..packet.len() - 3];
        assert!(matches!(read_startup(&mut &truncated[..]).await, Err(WireError::Closed)));
        let mut unterminated = packet.clone();
        let last = unterminated.len() - 1;
        unterminated[last] = b'x';
        assert!(matches!(read_startup(&mut &unterminated[..]).await, Err(WireError::Malformed(_))));
    }

    /// Random bytes, cut at random places, never panic the scanner, and every frame it returns
    /// has the length its header says (a small always-on fuzzer; xorshift keeps it repeatable).
    #[test]
    fn random_input_never_panics_and_frames_are_consistent() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let length = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            if next() % 2 == 0 && bytes.len() > 5 {
                // A plausible header, so whole frames and streaming are reached too.
                let claimed = (next() % 400) as i32;
                bytes[1..5].copy_from_slice(&claimed.to_be_bytes());
            }
            let mut scanner = Scanner::new(256, b"dD");
            let mut buffer = BytesMut::new();
            for chunk in bytes.chunks(1 + (next() % 64) as usize) {
                buffer.extend_from_slice(chunk);
                loop {
                    match scanner.next(&mut buffer) {
                        Ok(Some(Piece::Frame(frame))) => {
                            let length = i32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
                            assert_eq!(frame.len(), 1 + length as usize);
                        }
                        Ok(Some(Piece::Stream(_))) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            let mut body = &bytes[..];
            while cstr(&mut body).is_some() {}
        }
    }

    #[test]
    fn errors_are_well_formed() {
        let mut out = BytesMut::new();
        error_response(&mut out, Severity::Fatal, "57P01", "grant ended");
        let message = postgres_protocol::message::backend::Message::parse(&mut out).unwrap().unwrap();
        let postgres_protocol::message::backend::Message::ErrorResponse(body) = message else { panic!() };
        use fallible_iterator::FallibleIterator;
        let fields: Vec<(u8, String)> = body
            .fields()
            .map(|f| Ok((f.type_(), String::from_utf8_lossy(f.value_bytes()).into_owned())))
            .collect()
            .unwrap();
        assert!(fields.contains(&(b'C', "57P01".to_owned())) && fields.contains(&(b'M', "grant ended".to_owned())));
    }
}
