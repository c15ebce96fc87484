//! Airlock's PostgreSQL target connector.
//!
//! - [`roles`]: per-grant login roles on one target (create, drop, list) and their passwords;
//! - [`reconciler`]: converges every target on the live grants, at start, on each grant change
//!   and periodically;
//! - [`standing`]: the standing-privilege report (privileges no live grant explains);
//! - [`grant_ca`]: the certificate authority whose client certificates are the only way a grant
//!   role logs in (through the gateway) where `pg_hba.conf` says so;
//! - [`tls`]: the TLS to a target that its catalog settings ask for, shared with the gateway;
//! - [`cluster`]: a throwaway local PostgreSQL cluster started from the installed binaries (for
//!   the quickstart's `demo-db` and for tests).
pub mod cluster;
pub mod grant_ca;
pub mod reconciler;
pub mod roles;
pub mod standing;
pub mod tls;
