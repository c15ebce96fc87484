//! Airlock's pure domain: everything that decides, nothing that does I/O.
//!
//! Layout:
//! - [`ids`] and [`values`]: identifiers and value types that can only hold valid values
//!   (parse, don't validate);
//! - [`catalog`]: which resources and roles exist, each role's ceiling and approval count;
//! - [`policy`]: Cedar policies, indexed by resource and action, returning decisions with reasons;
//! - [`lifecycle`]: the request → approval → grant state machine; every transition takes `now`
//!   and returns the audit events it caused;
//! - [`breakglass`]: the review every emergency grant owes, and its escalation;
//! - [`incident`]: incidents, and the playbooks that pre-approve access for their responders;
//! - [`audit`]: audit events and the hash chain that makes edits, deletions and reorders visible;
//! - [`scope`]: what a bearer token may be used for;
//! - [`mfa`]: TOTP codes, accepted once each, with wrong codes rate-limited;
//! - [`device`]: trusted devices' keys, and the proofs they sign for each call;
//! - [`credential`]: the signed, grant-bound token a user gives the gateway as their password;
//! - [`policy_test`]: policy test cases that run like unit tests.
//!
//! Invariant: no I/O, no clock, no randomness. Time and fresh ids are arguments.

pub mod audit;
pub mod breakglass;
pub mod catalog;
pub mod credential;
pub mod device;
pub mod ids;
pub mod incident;
pub mod lifecycle;
pub mod mfa;
pub mod policy;
pub mod policy_test;
pub mod report;
pub mod scope;
pub mod values;
