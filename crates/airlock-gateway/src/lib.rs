//! Airlock's PostgreSQL gateway: users connect with their Airlock name and a grant-bound
//! credential as password; the gateway logs in to the target as the grant's own role, checks
//! every statement with a real PostgreSQL parser, records every statement in the audit chain,
//! and closes the session the moment its grant ends.
//!
//! Layout:
//! - [`gateway`]: the listener and the watcher that cuts sessions of ended grants;
//! - [`admission`]: TLS, startup, credential and grant checks, login to the target;
//! - [`limits`]: the front door: the startup deadline, the cap on connections logging in, failed
//!   logins per source;
//! - [`relay`]: one session's traffic, checked and recorded;
//! - [`guard`]: which statements a role may send;
//! - [`registry`]: live sessions, cuts and cancel routing;
//! - [`recorder`]: group-committed audit records;
//! - [`target`]: logging in to the database as a grant's role;
//! - [`tls`]: the listener's certificate, and the device key a client certificate proves;
//! - [`device_tls`]: a device's key and certificate as files for libpq;
//! - [`wire`]: frames of the PostgreSQL protocol;
//! - [`authority`]: what the gateway asks of the broker.

pub mod admission;
pub mod authority;
pub mod device_tls;
pub mod gateway;
pub mod guard;
pub mod limits;
pub mod recorder;
pub mod registry;
pub mod relay;
pub mod target;
pub mod tls;
pub mod wire;
