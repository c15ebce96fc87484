//! Trusted devices: enrollment proves the key, only approved devices are trusted, every call's
//! proof works once, for one call and one token; disabling a device ends what it asked for and
//! the grants whose credentials are bound to it. A real SQLite store and a manual clock.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use airlock_broker::broker::RequestInput;
use airlock_broker::clock::{Clock, ManualClock};
use airlock_broker::devices::{Device, DeviceProofError, Enrollment, PresentedProof};
use airlock_broker::{Broker, BrokerError, Caller, ErrorKind};
use airlock_core::device::{Call, DeviceKey, NONCE_BYTES, Proof, ProofError, enrollment_message};
use airlock_core::lifecycle::{GrantState, RequestState};
use airlock_core::values::{GrantDuration, Reason};
use airlock_store::{BROKER_CHAIN, Store};
use common::{quickstart_settings, write_bundle};
use ed25519_dalek::{Signer, SigningKey};
use tempfile::TempDir;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);
const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

const CATALOG: &str = r#"
[[resource]]
name = "orders-db"
kind = "postgres"
environment = "prod"
bind_credentials_to_device = true
[resource.roles.read]
max_duration = "1h"
[resource.roles.write]
max_duration = "1h"
"#;

/// Engineers may ask; a read asked from a trusted device skips review; SREs approve.
const POLICIES: &str = r#"
@id("eng-request") permit(principal in Group::"eng", action == Action::"request", resource);
@id("trusted-device-reads") permit(principal in Group::"eng", action == Action::"auto_approve", resource)
  when { context.role == "read" && context.device.trusted };
@id("sre-approves") permit(principal in Group::"sre", action == Action::"approve", resource);
"#;

struct App {
    broker: Broker,
    clock: Arc<ManualClock>,
    dana: String,
    mallory: String,
    _dir: TempDir,
}

async fn spawn() -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let bundle = write_bundle(dir.path(), "devices", CATALOG, &[("orders", POLICIES)]);
    let key = airlock_broker::secrets::load_or_create_key(dir.path()).unwrap();
    let broker = Broker::new(store, bundle, clock.clone() as Arc<dyn Clock>, quickstart_settings(), key);
    let add = |name: &str, group: &str| {
        let (name, groups) = (name.parse().unwrap(), vec![group.parse().unwrap()]);
        let broker = &broker;
        async move { broker.add_user(&name, &groups, false, "admin").await.unwrap() }
    };
    let dana = add("dana", "eng").await;
    let mallory = add("mallory", "eng").await;
    add("bob", "sre").await;
    App { broker, clock, dana, mallory, _dir: dir }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

const REQUESTS: &str = "/v1/requests";

impl App {
    async fn caller(&self, bearer: &str) -> Caller {
        self.broker.authenticate(bearer, IP, None).await.unwrap().0
    }

    /// `bearer`'s holder enrolls `key` as a device.
    async fn enroll(&self, bearer: &str, key: &SigningKey) -> Device {
        let caller = self.caller(bearer).await;
        let public = DeviceKey::of(key);
        let signature = key.sign(&enrollment_message(&caller.principal.name, &public)).to_bytes();
        let enrollment = Enrollment { name: "laptop".parse().unwrap(), key: public, signature: hex::encode(signature) };
        self.broker.enroll_device(&caller, enrollment).await.unwrap()
    }

    /// A proof by `key` as `device` for POST /v1/requests with `bearer`, now, with nonce `n`.
    fn proof(&self, key: &SigningKey, device: &Device, bearer: &str, n: u8) -> String {
        let call = Call { method: "POST", path: REQUESTS, bearer };
        Proof::sign(key, device.id, &call, self.clock.now(), [n; NONCE_BYTES]).header()
    }

    /// Authenticates `bearer` for POST /v1/requests with the device proof `header`.
    async fn call(&self, bearer: &str, header: &str) -> Result<Caller, BrokerError> {
        let proof = PresentedProof { header, method: "POST", path: REQUESTS };
        self.broker.authenticate(bearer, IP, Some(proof)).await.map(|(caller, _)| caller)
    }

    async fn kinds(&self) -> Vec<String> {
        self.broker.store().audit_chain(BROKER_CHAIN).await.unwrap().into_iter().map(|r| r.kind).collect()
    }
}

fn ask(role: &str) -> RequestInput {
    RequestInput {
        resource: "orders-db".parse().unwrap(),
        role: role.parse().unwrap(),
        duration: GrantDuration::parse("30m").unwrap(),
        reason: Reason::parse("OPS-7 look at the orders").unwrap(),
        incident: None,
    }
}

#[track_caller]
fn refused(result: Result<Caller, BrokerError>, expected: DeviceProofError) {
    match result {
        Err(error @ BrokerError::DeviceProof(_)) => {
            assert_eq!(error.kind(), ErrorKind::Unauthenticated);
            assert_eq!(error.to_string(), BrokerError::from(expected).to_string());
        }
        other => panic!("expected a refused device proof, got {other:?}"),
    }
}

#[tokio::test]
async fn only_an_approved_device_is_trusted_and_it_decides_with_the_policies() {
    let app = spawn().await;
    let dana = app.caller(&app.dana).await;

    // Enrolling somebody else's public key: the signature is not by that key.
    let victim = DeviceKey::of(&key(9));
    let forged = key(1).sign(&enrollment_message(&dana.principal.name, &victim)).to_bytes();
    let enrollment = Enrollment { name: "stolen".parse().unwrap(), key: victim, signature: hex::encode(forged) };
    let error = app.broker.enroll_device(&dana, enrollment).await.unwrap_err();
    assert!(matches!(error, BrokerError::BadEnrollment(ProofError::BadSignature)), "{error}");
    assert_eq!(error.kind(), ErrorKind::BadInput);

    let laptop = app.enroll(&app.dana, &key(1)).await;
    assert!(!laptop.is_trusted());
    let again = Enrollment { name: "again".parse().unwrap(), key: laptop.key, signature: String::new() };
    let caller = app.caller(&app.dana).await;
    let error = app.broker.enroll_device(&caller, again).await.unwrap_err();
    assert!(matches!(error, BrokerError::BadEnrollment(_)), "the signature is checked first: {error}");

    // Pending: the proof holds, but the device is not trusted yet, so a read waits for review.
    let pending = app.call(&app.dana, &app.proof(&key(1), &laptop, &app.dana, 1)).await.unwrap();
    assert_eq!(pending.device, None);
    let (request, grant) = app.broker.create_request(&pending, ask("read")).await.unwrap();
    assert_eq!((request.state, grant.is_none(), request.device), (RequestState::Pending, true, None));

    app.broker.approve_device(laptop.id, "admin").await.unwrap();
    let trusted = app.call(&app.dana, &app.proof(&key(1), &laptop, &app.dana, 2)).await.unwrap();
    assert_eq!(trusted.device.map(|d| (d.id, d.key)), Some((laptop.id, laptop.key)));
    let (request, grant) = app.broker.create_request(&trusted, ask("read")).await.unwrap();
    assert!(grant.is_some(), "policies see context.device.trusted");
    assert_eq!(request.device, Some(laptop.id));
    assert_eq!(request.decision.policies, vec!["trusted-device-reads".to_owned()]);

    // Without the proof, the same token is not trusted.
    let (_, grant) = app.broker.create_request(&app.caller(&app.dana).await, ask("read")).await.unwrap();
    assert!(grant.is_none());

    let kinds = app.kinds().await;
    for kind in ["device.enrolled", "device.approved"] {
        assert_eq!(kinds.iter().filter(|k| *k == kind).count(), 1, "{kind}: {kinds:?}");
    }
}

#[tokio::test]
async fn a_proof_works_once_for_one_call_one_token_and_one_minute() {
    let app = spawn().await;
    let laptop = app.enroll(&app.dana, &key(1)).await;
    app.broker.approve_device(laptop.id, "admin").await.unwrap();

    let header = app.proof(&key(1), &laptop, &app.dana, 1);
    app.call(&app.dana, &header).await.unwrap();
    refused(app.call(&app.dana, &header).await, DeviceProofError::Replayed);

    // Mallory stole the proof and holds a token of her own: the proof names Dana's token.
    refused(app.call(&app.mallory, &app.proof(&key(1), &laptop, &app.dana, 2)).await, DeviceProofError::UnknownDevice);
    // Mallory stole Dana's device key too: the device is still Dana's.
    refused(
        app.call(&app.mallory, &app.proof(&key(1), &laptop, &app.mallory, 3)).await,
        DeviceProofError::UnknownDevice,
    );
    // Mallory stole Dana's token but not the key: her own key does not sign for Dana's device.
    let bad = app.proof(&key(2), &laptop, &app.dana, 4);
    refused(app.call(&app.dana, &bad).await, ProofError::BadSignature.into());
    // Another call's proof.
    let call = Call { method: "POST", path: "/v1/grants/x/credentials", bearer: &app.dana };
    let other = Proof::sign(&key(1), laptop.id, &call, T0, [5; NONCE_BYTES]).header();
    refused(app.call(&app.dana, &other).await, ProofError::BadSignature.into());
    // Made two minutes ago.
    let stale = app.proof(&key(1), &laptop, &app.dana, 6);
    app.clock.advance(Duration::minutes(2));
    refused(app.call(&app.dana, &stale).await, ProofError::OutOfWindow { at: T0 }.into());
    refused(app.call(&app.dana, "not-a-proof").await, ProofError::Malformed.into());

    // Only the proofs that held were remembered: a fresh one still works.
    app.call(&app.dana, &app.proof(&key(1), &laptop, &app.dana, 7)).await.unwrap();
}

#[tokio::test]
async fn credentials_bound_to_a_device_need_a_trusted_one() {
    let app = spawn().await;
    let laptop = app.enroll(&app.dana, &key(1)).await;
    app.broker.approve_device(laptop.id, "admin").await.unwrap();
    let from_laptop = app.call(&app.dana, &app.proof(&key(1), &laptop, &app.dana, 1)).await.unwrap();
    let (_, grant) = app.broker.create_request(&from_laptop, ask("read")).await.unwrap();
    let grant = grant.unwrap().id.to_string();

    let error = app.broker.issue_credential(&app.caller(&app.dana).await, &grant).await.unwrap_err();
    assert!(matches!(error, BrokerError::TrustedDeviceRequired(_)), "{error}");
    assert_eq!(error.kind(), ErrorKind::Forbidden);

    let (credential, _) = app.broker.issue_credential(&from_laptop, &grant).await.unwrap();
    assert_eq!(credential.device, Some(laptop.key));
}

#[tokio::test]
async fn disabling_a_device_ends_what_it_asked_for_and_what_is_bound_to_it() {
    let app = spawn().await;
    let laptop = app.enroll(&app.dana, &key(1)).await;
    let desktop = app.enroll(&app.dana, &key(2)).await;
    for device in [&laptop, &desktop] {
        app.broker.approve_device(device.id, "admin").await.unwrap();
    }
    let bob = app.broker.add_user(&"bobby".parse().unwrap(), &["sre".parse().unwrap()], false, "admin").await.unwrap();
    let bob = app.caller(&bob).await;
    let mut nonce = 0;
    let mut from = |device: &Device, key: &SigningKey| {
        nonce += 1;
        app.proof(key, device, &app.dana, nonce)
    };

    // Asked from the laptop: a read (granted at once) and a write (pending).
    let laptop_caller = app.call(&app.dana, &from(&laptop, &key(1))).await.unwrap();
    let asked_read = app.broker.create_request(&laptop_caller, ask("read")).await.unwrap().1.unwrap();
    let (asked_write, _) = app.broker.create_request(&laptop_caller, ask("write")).await.unwrap();
    // Asked from the desktop, the credential then bound to the laptop.
    let desktop_caller = app.call(&app.dana, &from(&desktop, &key(2))).await.unwrap();
    let bound = app.broker.create_request(&desktop_caller, ask("read")).await.unwrap().1.unwrap();
    app.broker.issue_credential(&laptop_caller, &bound.id.to_string()).await.unwrap();
    // Asked and used from the desktop: the laptop has nothing to do with it.
    let apart = app.broker.create_request(&desktop_caller, ask("read")).await.unwrap().1.unwrap();

    // Only its owner (or an administrator) disables a device.
    let mallory = app.caller(&app.mallory).await;
    let error = app.broker.disable_own_device(&mallory, laptop.id).await.unwrap_err();
    assert!(matches!(error, BrokerError::DeviceNotFound(_)), "{error}");

    let (disabled, ended) = app.broker.disable_own_device(&app.caller(&app.dana).await, laptop.id).await.unwrap();
    assert!(disabled.disabled.is_some() && !disabled.is_trusted());
    assert_eq!((ended.requests_cancelled, ended.grants_revoked), (1, 2));
    for (grant, state) in
        [(&asked_read, GrantState::Revoked), (&bound, GrantState::Revoked), (&apart, GrantState::Active)]
    {
        let stored = app.broker.store().grant(&grant.id.to_string()).await.unwrap().unwrap();
        assert_eq!(stored.state, state, "{}", grant.id);
    }
    let withdrawn = app.broker.store().request(&asked_write.id.to_string()).await.unwrap().unwrap();
    assert_ne!(withdrawn.state, RequestState::Pending);
    let error = app.broker.approve(&bob, &asked_write.id.to_string(), None).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict, "a withdrawn request cannot be approved: {error}");

    // The laptop's proofs are refused from now on, and a caller it authenticated just before
    // the disable cannot act any more.
    refused(app.call(&app.dana, &from(&laptop, &key(1))).await, DeviceProofError::Disabled(laptop.id));
    let error = app.broker.create_request(&laptop_caller, ask("read")).await.unwrap_err();
    assert!(matches!(error, BrokerError::DeviceProof(DeviceProofError::Disabled(_))), "{error}");
    let error = app.broker.approve_device(laptop.id, "admin").await.unwrap_err();
    assert!(matches!(error, BrokerError::DeviceDisabled(_)) && error.kind() == ErrorKind::Conflict, "{error}");

    // An administrator disables the desktop: what it asked for ends too.
    let (_, ended) = app.broker.disable_device(desktop.id, "admin", "lost").await.unwrap();
    assert_eq!((ended.requests_cancelled, ended.grants_revoked), (0, 1));

    let records = app.broker.store().audit_chain(BROKER_CHAIN).await.unwrap();
    let disabled: Vec<_> = records.iter().filter(|r| r.kind == "device.disabled").collect();
    assert_eq!(disabled.len(), 2);
    let details: serde_json::Value = serde_json::from_str(&disabled[0].details).unwrap();
    assert_eq!(details["reason"], "disabled by its user");
    assert_eq!((details["requests_cancelled"].as_u64(), details["grants_revoked"].as_u64()), (Some(1), Some(2)));
}
