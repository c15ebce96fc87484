//! The HTTP client of the user commands: the broker's URL from `AIRLOCK_URL`, the caller's API
//! token from `AIRLOCK_TOKEN`, or when it is not set the login `airlock login` keeps
//! ([`crate::login::Session`], its access token refreshed when it has expired). When this machine
//! enrolled as a device at that broker, every call carries the device's proof
//! ([`crate::device::LocalDevice`]). Broker refusals become exit code 1; everything else exit
//! code 2.

use airlock_http::api::ErrorBody;
use anyhow::{Context, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Failure;
use crate::cli::Remote;
use crate::device::LocalDevice;
use airlock_core::device::PROOF_HEADER;

/// How long a download (an audit export) may take.
const LONGEST_DOWNLOAD: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// A query string (`?since=…&until=…&name=value`, or nothing) from optional time bounds and
/// further parameters (plain ASCII values).
pub fn time_query(
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    more: &[(&str, String)],
) -> Result<String, Failure> {
    let mut query = Vec::new();
    for (name, bound) in [("since", since), ("until", until)] {
        if let Some(at) = bound {
            let text = at.to_offset(time::UtcOffset::UTC).format(&Rfc3339).context("cannot format a time")?;
            query.push(format!("{name}={text}"));
        }
    }
    query.extend(more.iter().map(|(name, value)| format!("{name}={value}")));
    Ok(if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) })
}

/// The path and query of `url` as the broker sees them: below `base`'s own path, which a
/// reverse proxy in front of the broker strips. A device signs this.
fn path_below(base: &str, url: &reqwest::Url) -> String {
    let prefix = reqwest::Url::parse(base).map(|base| base.path().trim_end_matches('/').to_owned());
    let path = url.path().strip_prefix(prefix.as_deref().unwrap_or("")).unwrap_or(url.path());
    match url.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    bearer: Bearer,
    device: Option<LocalDevice>,
}

/// What the client calls with.
enum Bearer {
    /// `AIRLOCK_TOKEN`.
    Token(String),
    /// The login file's.
    Login(crate::login::Session),
}

impl Client {
    /// A client for a person's command: it proves its calls with this machine's device.
    pub fn new(remote: &Remote) -> Result<Self, Failure> {
        let mut client = Self::for_service(remote)?;
        client.device = LocalDevice::load_for(&client.base)?;
        Ok(client)
    }

    /// A client for a service account (`airlock gateway`): never with a person's device.
    pub fn for_service(remote: &Remote) -> Result<Self, Failure> {
        let base = remote.url.trim_end_matches('/').to_owned();
        let bearer = match std::env::var("AIRLOCK_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
            Some(token) => Bearer::Token(token.trim().to_owned()),
            None => Bearer::Login(crate::login::Session::load(&base)?.ok_or_else(|| {
                anyhow!(
                    "AIRLOCK_TOKEN is not set and nobody is signed in: export the API token `airlock admin user add` \
                     printed, or run `airlock login`"
                )
            })?),
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!("AIRLOCK_URL `{base}` must start with http:// or https://").into());
        }
        let http = airlock_broker::outbound::client(std::time::Duration::from_secs(30))
            .context("cannot build the HTTP client")?;
        Ok(Self { http, base, bearer, device: None })
    }

    /// The broker's URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// This machine's device, when it enrolled at this broker.
    pub fn device(&self) -> Option<&LocalDevice> {
        self.device.as_ref()
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Failure> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    /// Like [`Client::get`], but a 404 is `None`.
    pub async fn get_if_found<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, Failure> {
        match self.exchange(self.http.get(format!("{}{path}", self.base))).await? {
            (reqwest::StatusCode::NOT_FOUND, _) => Ok(None),
            (status, bytes) => self.decode(status, &bytes).map(Some),
        }
    }

    /// Streams the body of a GET to `out`, however long it takes; returns the bytes written.
    pub async fn download(&self, path: &str, out: &mut impl std::io::Write) -> Result<u64, Failure> {
        let request = self.http.get(format!("{}{path}", self.base)).timeout(LONGEST_DOWNLOAD);
        let mut response = self.call(request).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.map_err(|e| anyhow!("the broker's answer was cut off: {e}"))?;
            return self.decode::<serde_json::Value>(status, &bytes).map(|_| 0);
        }
        let mut written = 0;
        while let Some(chunk) = response.chunk().await.map_err(|e| anyhow!("the broker's answer was cut off: {e}"))? {
            out.write_all(&chunk).context("cannot write the answer")?;
            written += chunk.len() as u64;
        }
        Ok(written)
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, Failure> {
        let (status, bytes) = self.exchange(request).await?;
        self.decode(status, &bytes)
    }

    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, Vec<u8>), Failure> {
        let response = self.call(request).await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| anyhow!("the broker's answer was cut off: {e}"))?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends `request` with the bearer token and, from an enrolled device, its proof.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let token = self.bearer().await?;
        let mut request = request.bearer_auth(&token).build().context("cannot build the request")?;
        if let Some(device) = &self.device {
            let path = path_below(&self.base, request.url());
            let proof = device.proof(request.method().as_str(), &path, &token)?;
            let value =
                reqwest::header::HeaderValue::from_str(&proof).context("the device proof is not a header value")?;
            request.headers_mut().insert(PROOF_HEADER, value);
        }
        self.http.execute(request).await.map_err(|e| anyhow!("cannot reach the broker at {}: {e}", self.base).into())
    }

    /// The token to call with.
    async fn bearer(&self) -> Result<String, Failure> {
        match &self.bearer {
            Bearer::Token(token) => Ok(token.clone()),
            Bearer::Login(session) => session.access_token(&self.http).await,
        }
    }

    fn decode<T: DeserializeOwned>(&self, status: reqwest::StatusCode, bytes: &[u8]) -> Result<T, Failure> {
        if status.is_success() {
            return serde_json::from_slice(bytes)
                .map_err(|e| anyhow!("the broker's answer is not what this version of airlock expects: {e}").into());
        }
        let message = serde_json::from_slice::<ErrorBody>(bytes)
            .map(|body| body.error)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        if let (reqwest::StatusCode::UNAUTHORIZED, Bearer::Login(session)) = (status, &self.bearer) {
            let file = session.path().display();
            Err(Failure::Refused(format!("{message}: the login in {file} has ended; run `airlock login` again")))
        } else if status.is_client_error() {
            Err(Failure::Refused(message))
        } else {
            Err(anyhow!("the broker failed: {message}").into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_signs_the_path_the_broker_sees() {
        let url = |text: &str| reqwest::Url::parse(text).unwrap();
        let cases = [
            ("http://127.0.0.1:8470", "http://127.0.0.1:8470/v1/requests", "/v1/requests"),
            (
                "https://ops.example/airlock",
                "https://ops.example/airlock/v1/grants?active=true",
                "/v1/grants?active=true",
            ),
            ("https://ops.example/airlock/", "https://ops.example/airlock/v1/whoami", "/v1/whoami"),
            ("https://ops.example", "https://ops.example/v1/devices?all=true", "/v1/devices?all=true"),
        ];
        for (base, called, signed) in cases {
            assert_eq!(path_below(base, &url(called)), signed, "{base} {called}");
        }
    }
}
