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
