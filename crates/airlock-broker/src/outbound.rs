//! Outbound HTTP (webhooks, and the CLI's calls to a broker): the one way to build a client.
//!
//! reqwest is built without a TLS crypto provider of its own (its default, aws-lc, needs a C
//! and CMake build); rustls's `ring` provider, which the gateway already uses, is installed as
//! the process's default before the first client is built. Certificates are checked against the
//! platform's trust store.

use std::time::Duration;

/// A client whose requests time out after `timeout`.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    // Fails only when a default is already installed, which is what is wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(timeout).build()
}

/// Like [`client`], but a redirect is answered as it is, never followed: for talking to an
/// identity provider, where following one would let an answer send the broker's next request
/// anywhere (openidconnect's advice against server-side request forgery).
pub fn client_without_redirects(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none()).build()
}
