//! Airlock's use cases over the store: open a request, review it, start and end grants, and keep
//! the audit chain in step with every change.
//!
//! Layout:
//! - [`config`]: the `airlock.toml` file;
//! - [`bundle`]: the catalog and Cedar policies loaded from disk, with their version;
//! - [`clock`]: where time comes from (the system, or a hand-moved clock in tests);
//! - [`secrets`]: API tokens (shown once, stored hashed) and the broker's signing key;
//! - [`broker`]: the use cases, each one transaction with its audit events;
//! - [`breakglass`]: emergency grants at once, the review each owes, and its escalation;
//! - [`incidents`]: incidents opened and closed by their managers; closing one ends every grant
//!   and request made for it;
//! - `appender`: group commit for audit records that come without a state change;
//! - [`audit`]: the audit chain for auditors: tail, verification, signed exports;
//! - [`checkpoints`]: signs the chain's head every second (or every N records) and copies each
//!   checkpoint to sinks kept elsewhere;
//! - [`credentials`]: gateway credentials for a holder's live grant;
//! - [`devices`]: trusted devices, enrolled, approved and disabled, and the proofs calls carry;
//! - [`gateways`]: what a gateway running apart may ask and record;
//! - [`metrics`]: what is measured for Prometheus, and where;
//! - [`notify`]: webhook notifications made from committed audit records, signed, retried and
//!   recorded;
//! - [`reports`]: the summary of a window and the story of a user, resource or incident;
//! - [`outbound`]: HTTP clients for webhooks and the CLI;
//! - [`reevaluate`]: a policy change asks every live grant again, and revokes those the new
//!   policies would no longer allow;
//! - [`scheduler`]: ends pending requests and grants when their time is up, also after a restart;
//! - [`oidc`] and [`sso`]: single sign-on through an OpenID Connect provider (browser and device
//!   sign-ins, handoff to a loopback client, refresh), ending in a login ([`logins`]).

mod appender;
pub mod audit;
pub mod breakglass;
pub mod broker;
pub mod bundle;
pub mod checkpoints;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod devices;
pub mod gateways;
pub mod identity;
pub mod incidents;
pub mod logins;
pub mod metrics;
pub mod mfa;
pub mod notify;
pub mod oidc;
pub mod outbound;
pub mod reevaluate;
pub mod reports;
pub mod scheduler;
pub mod secrets;
pub mod sso;

pub use broker::{Broker, BrokerError, Caller, ErrorKind, TrustedDevice};
