//! Gateway credentials: the signed, short-lived token a user gives the gateway as their password.
//!
//! The broker [`issue`]s a credential for a live grant; the gateway [`verify`]s it offline with
//! the broker's public key, then asks the broker separately whether the grant is still live (not
//! revoked). A credential binds one grant to its holder, resource, role and time window, and
//! optionally to one source address and to one device's key, so a session can end at the credential's expiry even when
//! the broker is down.
//!
//! A credential is a PASETO `v4.public` token (Ed25519, signed and readable, not encrypted). Its
//! wire format is fixed here because a broker and a gateway may run different builds:
//! - payload: a JSON object with exactly the claims `aud` (always [`AUDIENCE`]), `jti` (the token
//!   id), `sub` (the holder), `grant`, `resource`, `role`, `iat`, `nbf` and `exp` (RFC 3339, UTC)
//!   and, when bound, `source` (an IP address) and `device` (a device's Ed25519 public key, 64 hex
//!   digits). Unknown claims are refused, so a restriction added later is never silently ignored
//!   by an older gateway.
//! - footer: `{"kid":"…"}`, the [`key_id`] of the signing key, so a verifier that holds several
//!   keys can pick one with [`key_id_of`]. The footer is covered by the signature, and [`verify`]
//!   refuses a token whose key id is not the id of the key it was given.
//! - the audience is a claim rather than an implicit assertion: it is visible in a decoded token
//!   and a token made for another purpose is refused with its own error.
//!
//! Time: `now` is an argument, never the clock (pasetors' own claim checks read the system clock,
//! so only its signature check is used). Expiry has no leeway, `now == exp` is expired: a leeway
//! there would lengthen the grant. `nbf` has [`NOT_BEFORE_LEEWAY`], so a token from a broker whose
//! clock runs slightly ahead of the gateway's works at once. `iat` is recorded, not checked.
//!
//! Keys are bytes, never a particular Ed25519 library's types: the signing key pair is `seed ||
//! public key` (what PASETO v4 calls the secret key and `ed25519_dalek::SigningKey::to_keypair_bytes`
//! returns), and pasetors checks that its halves belong together; the verifying key is the 32-byte
//! public key. Signing is deterministic, so [`issue`] is pure.
//!
//! Secrets: a [`Token`] and the password in a [`Login`] never show in `Debug` output, and no
//! error message contains a token or a key. Error messages are shown to the person connecting.

use std::fmt;
use std::net::IpAddr;

use pasetors::Public;
use pasetors::errors::Error as PasetoError;
use pasetors::keys::{AsymmetricPublicKey, AsymmetricSecretKey};
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::device::DeviceKey;
use crate::ids::{GrantId, ResourceName, RoleName, UserName};
use crate::lifecycle::Grant;

/// The `aud` claim of every gateway credential.
pub const AUDIENCE: &str = "airlock-gateway";

/// How long before its `nbf` a credential is already accepted, for clocks that differ slightly.
pub const NOT_BEFORE_LEEWAY: Duration = Duration::seconds(5);

/// The longest text [`verify`] will parse; a credential with the longest names is under 1 KiB.
pub const MAX_TOKEN_LEN: usize = 2048;

const HEADER: &str = "v4.public.";
/// PASETO kinds that are not Airlock credentials, named in the error when presented.
const OTHER_KINDS: [&str; 7] = ["v1.local", "v1.public", "v2.local", "v2.public", "v3.local", "v3.public", "v4.local"];

/// What a credential grants: who may connect to which resource as which role, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub token_id: Uuid,
    pub grant: GrantId,
    pub holder: UserName,
    pub resource: ResourceName,
    pub role: RoleName,
    pub issued_at: OffsetDateTime,
    pub not_before: OffsetDateTime,
    /// The grant's end or earlier; never later.
    pub expires_at: OffsetDateTime,
    /// When set, only connections from this address are accepted.
    pub source: Option<IpAddr>,
    /// When set, only connections that prove this device key (a TLS client certificate for it).
    pub device: Option<DeviceKey>,
}

impl Credential {
    /// The credential for `grant` issued at `now`: valid from the grant's start to its end, from
    /// any address. Refused unless the grant is live at `now`.
    pub fn for_grant(grant: &Grant, token_id: Uuid, now: OffsetDateTime) -> Result<Self, IssueError> {
        if !grant.is_live(now) {
            return Err(IssueError::GrantNotLive { grant: grant.id });
        }
        Ok(Self {
            token_id,
            grant: grant.id,
            holder: grant.holder.clone(),
            resource: grant.resource.clone(),
            role: grant.role.clone(),
            issued_at: now,
            not_before: grant.starts_at,
            expires_at: grant.ends_at,
            source: None,
            device: None,
        })
    }

    /// Expires at `at` if that is earlier; a credential is never lengthened.
    #[must_use]
    pub fn expiring_by(mut self, at: OffsetDateTime) -> Self {
        self.expires_at = self.expires_at.min(at);
        self
    }

    /// Accepts only connections from `source`.
    #[must_use]
    pub fn bound_to(mut self, source: IpAddr) -> Self {
        self.source = Some(source.to_canonical());
        self
    }

    /// Accepts only connections that prove `device`'s key.
    #[must_use]
    pub fn bound_to_device(mut self, device: DeviceKey) -> Self {
        self.device = Some(device);
        self
    }
}

/// A signed credential as text, the password the user gives the gateway. It has no `Display`
/// and its `Debug` hides it, so it reaches a log only through [`Token::expose`].
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// The token text, to hand to its holder once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a client presented to the gateway: the startup message's user and password, the
/// address the connection comes from (`None` when it has none, e.g. a Unix socket), and the key
/// its TLS client certificate proved it holds (`None` without one).
#[derive(Clone, Copy)]
pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub source: Option<IpAddr>,
    pub device: Option<DeviceKey>,
}

impl fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .field("device", &self.device)
            .finish()
    }
}

/// Why the broker could not issue a credential.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("grant `{grant}` is not live, so no credential is issued for it")]
    GrantNotLive { grant: GrantId },
    #[error("the credential would expire at {} before it is valid or issued", rfc3339(.expires_at))]
    EmptyWindow { expires_at: OffsetDateTime },
    #[error("the signing key pair is invalid: its public half does not belong to its seed")]
    Key,
    #[error("cannot encode the credential's claims: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Why the gateway refused a credential. The messages are shown to the person connecting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the password is not an Airlock credential")]
    Malformed,
    #[error("the password is a PASETO `{kind}` token; Airlock credentials are `v4.public` tokens")]
    UnsupportedKind { kind: &'static str },
    #[error("the credential was signed by a key this gateway does not know; ask the broker for a new credential")]
    UnknownKey,
    #[error("the credential's signature is not valid: it was altered or signed by another key")]
    BadSignature,
    #[error("the credential was issued for another purpose, not for the Airlock gateway")]
    WrongAudience,
    #[error("the credential was not issued to `{user}`")]
    WrongUser { user: String },
    #[error("the credential expired at {}", rfc3339(.at))]
    Expired { at: OffsetDateTime },
    #[error("the credential is not valid before {}", rfc3339(.at))]
    NotYetValid { at: OffsetDateTime },
    #[error("the credential is bound to source address {bound} and this connection comes from {actual}")]
    WrongSource { bound: IpAddr, actual: IpAddr },
    #[error("the credential is bound to source address {bound} and this connection has no address")]
    UnknownSource { bound: IpAddr },
    #[error(
        "the credential is bound to a device and this connection presented no client certificate for it; connect with `airlock connect`, or give libpq the sslcert and sslkey `airlock credentials` names"
    )]
    NoDevice,
    #[error("the credential is bound to another device than the one this connection's client certificate proves")]
    WrongDevice,
}

/// The public id of a verifying key: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(public_key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// The key id a token claims to be signed with, to choose among several keys. Untrusted until
/// [`verify`] succeeds; `None` when the text is not an Airlock credential.
pub fn key_id_of(token: &str) -> Option<String> {
    let untrusted = parse(token).ok()?;
    read_footer(untrusted.untrusted_footer()).ok()
}

/// Signs `credential` with `keypair` (`seed || public key`).
pub fn issue(keypair: &[u8; 64], credential: &Credential) -> Result<Token, IssueError> {
    let c = credential;
    if c.expires_at <= c.not_before || c.expires_at <= c.issued_at {
        return Err(IssueError::EmptyWindow { expires_at: c.expires_at });
    }
    let secret = AsymmetricSecretKey::<V4>::from(keypair).map_err(|_| IssueError::Key)?;
    let public: [u8; 32] = std::array::from_fn(|i| keypair[32 + i]);
    let claims = Claims {
        aud: AUDIENCE.to_owned(),
        jti: c.token_id,
        sub: c.holder.clone(),
        grant: c.grant,
        resource: c.resource.clone(),
        role: c.role.clone(),
        iat: c.issued_at,
        nbf: c.not_before,
        exp: c.expires_at,
        source: c.source.map(|s| s.to_canonical()),
        device: c.device,
    };
    let payload = serde_json::to_vec(&claims).map_err(IssueError::Encode)?;
    let footer = serde_json::to_vec(&Footer { kid: key_id(&public) }).map_err(IssueError::Encode)?;
    // Fails only on a bad key or an empty payload, and neither can reach this line.
    let token = PublicToken::sign(&secret, &payload, Some(&footer), None).map_err(|_| IssueError::Key)?;
    Ok(Token(token))
}

/// Checks `login` against `public_key` at `now`: the signature and key id, the audience, that
/// the credential was issued to `login.user`, its window and its source binding.
pub fn verify(public_key: &[u8; 32], login: &Login<'_>, now: OffsetDateTime) -> Result<Credential, VerifyError> {
    let untrusted = parse(login.password)?;
    if read_footer(untrusted.untrusted_footer())? != key_id(public_key) {
        return Err(VerifyError::UnknownKey);
    }
    let key = AsymmetricPublicKey::<V4>::from(public_key).map_err(|_| VerifyError::BadSignature)?;
    let trusted = PublicToken::verify(&key, &untrusted, None, None).map_err(|error| match error {
        PasetoError::TokenValidation => VerifyError::BadSignature,
        _ => VerifyError::Malformed,
    })?;
    let claims: Claims = serde_json::from_str(trusted.payload()).map_err(|_| VerifyError::Malformed)?;

    if claims.aud != AUDIENCE {
        return Err(VerifyError::WrongAudience);
    }
    if claims.sub.as_str() != login.user {
        return Err(VerifyError::WrongUser { user: login.user.to_owned() });
    }
    if now >= claims.exp {
        return Err(VerifyError::Expired { at: claims.exp });
    }
    if now < claims.nbf - NOT_BEFORE_LEEWAY {
        return Err(VerifyError::NotYetValid { at: claims.nbf });
    }
    if let Some(bound) = claims.source {
        match login.source.map(|s| s.to_canonical()) {
            None => return Err(VerifyError::UnknownSource { bound }),
            Some(actual) if actual != bound.to_canonical() => return Err(VerifyError::WrongSource { bound, actual }),
            Some(_) => {}
        }
    }
    match (claims.device, login.device) {
        (Some(_), None) => return Err(VerifyError::NoDevice),
        (Some(bound), Some(proved)) if bound != proved => return Err(VerifyError::WrongDevice),
        _ => {}
    }
    Ok(Credential {
        token_id: claims.jti,
        grant: claims.grant,
        holder: claims.sub,
        resource: claims.resource,
        role: claims.role,
        issued_at: claims.iat,
        not_before: claims.nbf,
        expires_at: claims.exp,
        source: claims.source,
        device: claims.device,
    })
}

/// The claims as they travel; see the module documentation.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    aud: String,
    jti: Uuid,
    sub: UserName,
    grant: GrantId,
    resource: ResourceName,
    role: RoleName,
    #[serde(with = "utc")]
    iat: OffsetDateTime,
    #[serde(with = "utc")]
    nbf: OffsetDateTime,
    #[serde(with = "utc")]
    exp: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<DeviceKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Footer {
    kid: String,
}

/// RFC 3339 in UTC, whatever offset the time was given in.
mod utc {
    use serde::ser::Error as _;
    use serde::{Deserializer, Serializer};
    use time::{OffsetDateTime, UtcOffset};

    pub fn serialize<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
        let at = at.checked_to_offset(UtcOffset::UTC).ok_or_else(|| S::Error::custom("time out of range"))?;
        time::serde::rfc3339::serialize(&at, serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OffsetDateTime, D::Error> {
        time::serde::rfc3339::deserialize(deserializer)
    }
}

/// The token's parts, unverified; refuses other PASETO kinds by name and oversized text.
fn parse(token: &str) -> Result<UntrustedToken<Public, V4>, VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::Malformed);
    }
    if !token.starts_with(HEADER) {
        let kind =
            OTHER_KINDS.into_iter().find(|kind| token.strip_prefix(kind).is_some_and(|rest| rest.starts_with('.')));
        return Err(kind.map_or(VerifyError::Malformed, |kind| VerifyError::UnsupportedKind { kind }));
    }
    UntrustedToken::try_from(token).map_err(|_| VerifyError::Malformed)
}

/// The key id in a footer.
fn read_footer(footer: &[u8]) -> Result<String, VerifyError> {
    serde_json::from_slice::<Footer>(footer).map(|f| f.kid).map_err(|_| VerifyError::Malformed)
}

fn rfc3339(at: &OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RequestId;
    use crate::lifecycle::GrantState;
    use pasetors::keys::SymmetricKey;
    use pasetors::version4::LocalToken;
    use time::macros::{datetime, offset};

    /// RFC 8032 section 7.1, tests 1 and 2, as `seed || public key`.
    const KEY_A: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\
                         d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const KEY_B: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb\
                         3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const T0: OffsetDateTime = datetime!(2030-01-01 10:00 UTC);

    fn keypair(hex_text: &str) -> [u8; 64] {
        hex::decode(hex_text).unwrap().try_into().unwrap()
    }

    fn public(keypair: &[u8; 64]) -> [u8; 32] {
        keypair[32..].try_into().unwrap()
    }

    fn credential() -> Credential {
        Credential {
            token_id: Uuid::from_u128(0x0195_0000_0000_7000_8000_0000_0000_0001),
            grant: GrantId::from_uuid(Uuid::from_u128(0x0195_0000_0000_7000_8000_0000_0000_0002)),
            holder: UserName::parse("alice").unwrap(),
            resource: ResourceName::parse("orders-db").unwrap(),
            role: RoleName::parse("read-only").unwrap(),
            issued_at: T0,
            not_before: T0,
            expires_at: T0 + Duration::hours(1),
            source: None,
            device: None,
        }
    }

    fn issued(credential: &Credential) -> String {
        issue(&keypair(KEY_A), credential).unwrap().expose().to_owned()
    }

    fn login(token: &str) -> Login<'_> {
        Login { user: "alice", password: token, source: None, device: None }
    }

    /// Verifies with key A.
    #[track_caller]
    fn check(login: Login<'_>, now: OffsetDateTime, expect: Result<&Credential, VerifyError>) {
        assert_eq!(verify(&public(&keypair(KEY_A)), &login, now).as_ref(), expect.as_ref().copied());
    }

    /// Signs any payload and footer with `keypair`, as a broker with a bug or a thief with the key could.
    fn sign_raw(keypair: &[u8; 64], payload: &str, footer: &str) -> String {
        let secret = AsymmetricSecretKey::<V4>::from(keypair).unwrap();
        let footer = (!footer.is_empty()).then_some(footer.as_bytes());
        PublicToken::sign(&secret, payload.as_bytes(), footer, None).unwrap()
    }

    fn footer_a() -> String {
        format!(r#"{{"kid":"{}"}}"#, key_id(&public(&keypair(KEY_A))))
    }

    fn payload(claims: &str) -> String {
        claims.replace('\'', "\"")
    }

    const GOOD_CLAIMS: &str = "{'aud':'airlock-gateway','jti':'01950000-0000-7000-8000-000000000001',\
        'sub':'alice','grant':'01950000-0000-7000-8000-000000000002','resource':'orders-db','role':'read-only',\
        'iat':'2030-01-01T10:00:00Z','nbf':'2030-01-01T10:00:00Z','exp':'2030-01-01T11:00:00Z'}";

    /// Base64url without padding, as PASETO encodes.
    fn b64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }

    #[test]
    fn round_trip() {
        let c = credential();
        let token = issued(&c);
        check(login(&token), T0, Ok(&c));
        check(login(&token), T0 + Duration::minutes(59), Ok(&c));
        assert_eq!(key_id_of(&token), Some(key_id(&public(&keypair(KEY_A)))));
        assert_eq!(issued(&c), token, "signing is deterministic");

        // Times given in another offset come back as the same instants.
        let c = Credential { expires_at: (T0 + Duration::hours(1)).to_offset(offset!(+2)), ..credential() };
        check(login(&issued(&c)), T0, Ok(&c));

        // Nanoseconds survive.
        let c = Credential { expires_at: T0 + Duration::nanoseconds(1_500_000_001), ..credential() };
        check(login(&issued(&c)), T0, Ok(&c));

        // The longest credential fits well within what `verify` reads.
        let long = "x".repeat(64);
        let c = Credential {
            holder: UserName::parse(&long).unwrap(),
            resource: ResourceName::parse(&long).unwrap(),
            role: RoleName::parse(&long).unwrap(),
            expires_at: T0 + Duration::nanoseconds(3_600_123_456_789),
            ..credential().bound_to("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap())
        };
        let token = issued(&c);
        assert!(token.len() < MAX_TOKEN_LEN / 2, "{}", token.len());
        check(Login { user: &long, password: &token, source: c.source, device: None }, T0, Ok(&c));
    }

    #[test]
    fn wire_format_is_fixed() {
        assert_eq!(key_id(&public(&keypair(KEY_A))), "21fe31dfa154a261");
        let token = issued(&credential());
        let untrusted = UntrustedToken::<Public, V4>::try_from(token.as_str()).unwrap();
        assert_eq!(std::str::from_utf8(untrusted.untrusted_payload()).unwrap(), payload(GOOD_CLAIMS));
        assert_eq!(untrusted.untrusted_footer(), footer_a().as_bytes());
        assert_eq!(sign_raw(&keypair(KEY_A), &payload(GOOD_CLAIMS), &footer_a()), token);

        let bound = issued(&credential().bound_to("::ffff:10.0.0.5".parse().unwrap()));
        let untrusted = UntrustedToken::<Public, V4>::try_from(bound.as_str()).unwrap();
        let text = std::str::from_utf8(untrusted.untrusted_payload()).unwrap();
        assert!(text.ends_with(r#","source":"10.0.0.5"}"#), "{text}");
    }

    #[test]
    fn refuses_what_the_key_did_not_sign() {
        let token = issued(&credential());
        let (a, b) = (keypair(KEY_A), keypair(KEY_B));

        // The payload edited, the signature kept.
        let untrusted = UntrustedToken::<Public, V4>::try_from(token.as_str()).unwrap();
        let mut body = untrusted.untrusted_message().to_vec();
        let footer = format!(".{}", b64(untrusted.untrusted_footer()));
        assert_eq!(format!("{HEADER}{}{footer}", b64(&body)), token, "the test's encoder matches PASETO's");
        let at = body.windows(9).position(|w| w == b"read-only").unwrap();
        body[at..at + 9].copy_from_slice(b"superuser");
        check(login(&format!("{HEADER}{}{footer}", b64(&body))), T0, Err(VerifyError::BadSignature));

        // Another key, claiming to be key A.
        let other = sign_raw(&b, &payload(GOOD_CLAIMS), &footer_a());
        check(login(&other), T0, Err(VerifyError::BadSignature));

        // Verified with another key: the key ids differ.
        assert_eq!(verify(&public(&b), &login(&token), T0), Err(VerifyError::UnknownKey));

        // Signed with key A but without a key id, or with more in the footer.
        check(login(&sign_raw(&a, &payload(GOOD_CLAIMS), "")), T0, Err(VerifyError::Malformed));
        let footer = format!(r#"{{"kid":"{}","x":1}}"#, key_id(&public(&a)));
        check(login(&sign_raw(&a, &payload(GOOD_CLAIMS), &footer)), T0, Err(VerifyError::Malformed));
    }

    #[test]
    fn refuses_what_is_not_a_credential() {
        let token = issued(&credential());
        for end in 0..token.len() {
            check(login(&token[..end]), T0, Err(VerifyError::Malformed));
        }
        for garbage in [
            "hunter2",
            "v4.public.",
            "v4.public.!!!!",
            "v4.public.AAAA",
            "v4.public.AAAA.BBBB.CCCC.DDDD",
            "v4.publicity.AAAA",
            "v5.public.AAAA",
            "ünïcödé 🔑",
            &format!("{token}x"),
            &format!("{token}.{}", b64(b"{}")),
        ] {
            check(login(garbage), T0, Err(VerifyError::Malformed));
        }
        // Signed and otherwise good, but longer than any credential the broker makes.
        let padded = format!("{}{}", payload(GOOD_CLAIMS), " ".repeat(MAX_TOKEN_LEN));
        check(login(&sign_raw(&keypair(KEY_A), &padded, &footer_a())), T0, Err(VerifyError::Malformed));

        let local_key = SymmetricKey::<V4>::from(&[7; 32]).unwrap();
        let local = LocalToken::encrypt(&local_key, payload(GOOD_CLAIMS).as_bytes(), Some(footer_a().as_bytes()), None);
        check(login(&local.unwrap()), T0, Err(VerifyError::UnsupportedKind { kind: "v4.local" }));
        let v3 = "v3.public.eyJkYXRhIjoidGhpcyBpcyBhIHNpZ25lZCBtZXNzYWdlIiwiZXhwIjoiMjAyMi0wMS0wMVQwMDowMDowMCswMDowMCJ9\
                  ZWrbGZ6L0MDK72skosUaS0Dz7wJ_2bMcM6tOxFuCasO9GhwHrvvchqgXQNLQQyWzGC2wkr-VKII71AvkLpC8tJOrzJV1cap9NRwoFzbcXjzMZyxQ0wkshxZxx8ImmNWP";
        check(login(v3), T0, Err(VerifyError::UnsupportedKind { kind: "v3.public" }));
        assert_eq!(key_id_of(v3), None);
    }

    #[test]
    fn signed_claims_are_checked_like_any_input() {
        let a = keypair(KEY_A);
        #[track_caller]
        fn claims(edit: (&str, &str), expect: VerifyError) {
            let (from, to) = edit;
            assert!(GOOD_CLAIMS.contains(from), "{from}");
            let token = sign_raw(&keypair(KEY_A), &payload(&GOOD_CLAIMS.replace(from, to)), &footer_a());
            check(login(&token), T0, Err(expect));
        }
        claims(("'aud':'airlock-gateway'", "'aud':'airlock-api'"), VerifyError::WrongAudience);
        claims(("'aud':'airlock-gateway',", ""), VerifyError::Malformed);
        claims(("'sub':'alice'", "'sub':'ålice'"), VerifyError::Malformed);
        claims(("'role':'read-only'", "'role':'read only'"), VerifyError::Malformed);
        claims(("'resource':'orders-db'", "'resource':''"), VerifyError::Malformed);
        claims(("'grant':'01950000-0000-7000-8000-000000000002'", "'grant':'g-2'"), VerifyError::Malformed);
        claims(("'exp':'2030-01-01T11:00:00Z'", "'exp':'tomorrow'"), VerifyError::Malformed);
        claims(("'exp':'2030-01-01T11:00:00Z'", "'exp':1893495600"), VerifyError::Malformed);
        claims(("'nbf'", "'device':'laptop-7','nbf'"), VerifyError::Malformed);
        claims(("'nbf'", "'network':'10.0.0.0/8','nbf'"), VerifyError::Malformed);
        claims(
            ("'exp':'2030-01-01T11:00:00Z'", "'exp':'2030-01-01T11:00:00Z','exp':'2031-01-01T11:00:00Z'"),
            VerifyError::Malformed,
        );

        // Not a JSON object, and not UTF-8.
        check(login(&sign_raw(&a, "[]", &footer_a())), T0, Err(VerifyError::Malformed));
        let secret = AsymmetricSecretKey::<V4>::from(&a).unwrap();
        let latin1 = PublicToken::sign(&secret, b"{\"sub\":\"\xe5lice\"}", Some(footer_a().as_bytes()), None);
        check(login(&latin1.unwrap()), T0, Err(VerifyError::Malformed));
    }

    #[test]
    fn the_window_is_enforced_without_leeway_at_the_end() {
        let c = Credential { not_before: T0 + Duration::minutes(10), ..credential() };
        let token = issued(&c);
        let end = c.expires_at;
        check(login(&token), end - Duration::nanoseconds(1), Ok(&c));
        check(login(&token), end, Err(VerifyError::Expired { at: end }));
        check(login(&token), end + Duration::days(1), Err(VerifyError::Expired { at: end }));
        check(login(&token), c.not_before - NOT_BEFORE_LEEWAY, Ok(&c));
        let early = c.not_before - NOT_BEFORE_LEEWAY - Duration::nanoseconds(1);
        check(login(&token), early, Err(VerifyError::NotYetValid { at: c.not_before }));
        check(login(&token), T0, Err(VerifyError::NotYetValid { at: c.not_before }));
    }

    #[test]
    fn only_the_holder_may_use_it() {
        let c = credential();
        let token = issued(&c);
        check(Login { user: "bob", ..login(&token) }, T0, Err(VerifyError::WrongUser { user: "bob".into() }));
        check(Login { user: "Alice", ..login(&token) }, T0, Err(VerifyError::WrongUser { user: "Alice".into() }));
        check(Login { user: "", ..login(&token) }, T0, Err(VerifyError::WrongUser { user: "".into() }));
    }

    #[test]
    fn a_bound_source_is_checked() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let from = |token, source: Option<&str>| Login { source: source.map(ip), ..login(token) };

        let bound = credential().bound_to(ip("10.0.0.5"));
        let token = issued(&bound);
        check(from(&token, Some("10.0.0.5")), T0, Ok(&bound));
        check(from(&token, Some("::ffff:10.0.0.5")), T0, Ok(&bound));
        let wrong = VerifyError::WrongSource { bound: ip("10.0.0.5"), actual: ip("10.0.0.6") };
        check(from(&token, Some("10.0.0.6")), T0, Err(wrong));
        check(from(&token, None), T0, Err(VerifyError::UnknownSource { bound: ip("10.0.0.5") }));

        let bound = credential().bound_to(ip("2001:db8::1"));
        let token = issued(&bound);
        check(from(&token, Some("2001:db8:0::1")), T0, Ok(&bound));
        let wrong = VerifyError::WrongSource { bound: ip("2001:db8::1"), actual: ip("2001:db8::2") };
        check(from(&token, Some("2001:db8::2")), T0, Err(wrong));

        // Addresses are compared in canonical form, however they were signed or seen.
        let mapped = GOOD_CLAIMS.replace("}", ",'source':'::ffff:10.0.0.5'}");
        let token = sign_raw(&keypair(KEY_A), &payload(&mapped), &footer_a());
        let signed = Credential { source: Some(ip("::ffff:10.0.0.5")), ..credential() };
        check(from(&token, Some("10.0.0.5")), T0, Ok(&signed));
        let given = Credential { source: Some(ip("::ffff:10.0.0.5")), ..credential() };
        let token = issued(&given);
        check(from(&token, Some("10.0.0.5")), T0, Ok(&credential().bound_to(ip("10.0.0.5"))));

        let unbound = credential();
        let token = issued(&unbound);
        check(from(&token, Some("192.0.2.1")), T0, Ok(&unbound));
        check(from(&token, None), T0, Ok(&unbound));
    }

    #[test]
    fn a_bound_device_is_checked() {
        let device = |seed: u8| DeviceKey::of(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]));
        let from = |token, proved: Option<DeviceKey>| Login { device: proved, ..login(token) };

        let bound = credential().bound_to_device(device(1));
        let token = issued(&bound);
        check(from(&token, Some(device(1))), T0, Ok(&bound));
        check(from(&token, Some(device(2))), T0, Err(VerifyError::WrongDevice));
        check(from(&token, None), T0, Err(VerifyError::NoDevice));

        let untrusted = UntrustedToken::<Public, V4>::try_from(token.as_str()).unwrap();
        let text = std::str::from_utf8(untrusted.untrusted_payload()).unwrap();
        assert!(text.ends_with(&format!(r#","device":"{}"}}"#, device(1))), "{text}");

        // Both bindings hold at once; an unbound credential works with or without a certificate.
        let both = credential().bound_to("10.0.0.5".parse().unwrap()).bound_to_device(device(1));
        let token = issued(&both);
        let elsewhere = Login { source: Some("10.0.0.6".parse().unwrap()), ..from(&token, Some(device(1))) };
        assert!(matches!(verify(&public(&keypair(KEY_A)), &elsewhere, T0), Err(VerifyError::WrongSource { .. })));
        let unbound = credential();
        check(from(&issued(&unbound), Some(device(2))), T0, Ok(&unbound));
    }

    #[test]
    fn issuing_refuses_empty_windows_and_bad_keys() {
        let empty = |c: Credential| matches!(issue(&keypair(KEY_A), &c), Err(IssueError::EmptyWindow { .. }));
        assert!(empty(Credential { expires_at: T0, ..credential() }));
        assert!(empty(Credential { not_before: T0 + Duration::hours(2), ..credential() }));
        assert!(empty(Credential { issued_at: T0 + Duration::hours(1), ..credential() }));

        let mut mixed = keypair(KEY_A);
        mixed[32..].copy_from_slice(&public(&keypair(KEY_B)));
        assert!(matches!(issue(&mixed, &credential()), Err(IssueError::Key)));

        let far = Credential { expires_at: datetime!(9999-12-31 23:59 -01:00), ..credential() };
        assert!(matches!(issue(&keypair(KEY_A), &far), Err(IssueError::Encode(_))));
    }

    #[test]
    fn a_credential_never_outlives_its_grant() {
        let mut grant = Grant {
            id: GrantId::from_uuid(Uuid::from_u128(2)),
            request_id: RequestId::from_uuid(Uuid::from_u128(1)),
            holder: UserName::parse("alice").unwrap(),
            resource: ResourceName::parse("orders-db").unwrap(),
            role: RoleName::parse("read-only").unwrap(),
            starts_at: T0,
            ends_at: T0 + Duration::hours(1),
            state: GrantState::Active,
            closure: None,
        };
        let now = T0 + Duration::minutes(5);
        let c = Credential::for_grant(&grant, Uuid::from_u128(3), now).unwrap();
        assert_eq!((c.grant, c.issued_at, c.not_before, c.expires_at), (grant.id, now, T0, grant.ends_at));
        assert_eq!(
            (c.holder.as_str(), c.resource.as_str(), c.role.as_str(), c.source),
            ("alice", "orders-db", "read-only", None)
        );
        assert_eq!(c.clone().expiring_by(now + Duration::minutes(15)).expires_at, now + Duration::minutes(15));
        assert_eq!(c.clone().expiring_by(grant.ends_at + Duration::hours(1)).expires_at, grant.ends_at);

        assert!(matches!(
            Credential::for_grant(&grant, Uuid::nil(), grant.ends_at),
            Err(IssueError::GrantNotLive { .. })
        ));
        grant.state = GrantState::Revoked;
        assert!(matches!(Credential::for_grant(&grant, Uuid::nil(), now), Err(IssueError::GrantNotLive { .. })));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_messages() {
        let token = issue(&keypair(KEY_A), &credential()).unwrap();
        let text = token.expose();
        assert!(!format!("{token:?}").contains(text));
        let login = login(text);
        let shown = format!("{login:?}");
        assert!(!shown.contains(text) && shown.contains("alice"), "{shown}");

        let errors = [
            VerifyError::Malformed,
            VerifyError::UnsupportedKind { kind: "v4.local" },
            VerifyError::UnknownKey,
            VerifyError::BadSignature,
            VerifyError::WrongAudience,
            VerifyError::WrongUser { user: "bob".into() },
            VerifyError::Expired { at: T0 },
            VerifyError::NotYetValid { at: T0 },
            VerifyError::WrongSource { bound: "10.0.0.5".parse().unwrap(), actual: "10.0.0.6".parse().unwrap() },
            VerifyError::UnknownSource { bound: "10.0.0.5".parse().unwrap() },
            VerifyError::NoDevice,
            VerifyError::WrongDevice,
        ];
        for error in errors {
            let message = error.to_string();
            assert!(message.starts_with(char::is_lowercase) && !message.ends_with('.'), "{message}");
        }
        assert_eq!(VerifyError::Expired { at: T0 }.to_string(), "the credential expired at 2030-01-01T10:00:00Z");
    }
}
