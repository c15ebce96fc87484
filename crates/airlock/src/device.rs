//! This machine as a trusted device: `airlock device enroll|list|disable`, administrators'
//! `airlock admin device approve|disable|list`, and what the other commands do with the device.
//!
//! The device is an Ed25519 key made here, in `$AIRLOCK_DEVICE_KEY` (default
//! `~/.config/airlock/device.key`, mode 0600, a PKCS#8 PEM file libpq reads as `sslkey`), and
//! what the broker calls it, beside the key (`device.key.json`: the device's id and the broker's
//! URL). Every call to that broker carries a proof signed by the key ([`LocalDevice::proof`]); a
//! credential bound to the device comes with a short-lived certificate for the key, written
//! beside it (`device.key.crt`), which `psql` presents as `sslcert`.

use std::fs;
use std::path::{Path, PathBuf};

use airlock_core::device::{Call, DeviceKey, NONCE_BYTES, Proof, enrollment_message};
use airlock_core::ids::{DeviceId, DeviceName};
use airlock_gateway::device_tls;
use airlock_http::api::{DeviceView, DisabledDeviceView, EnrollDeviceBody, WhoAmI};
use anyhow::{Context, anyhow};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::cli::{AdminDeviceCommand, DeviceCommand, Files, Remote};
use crate::client::Client;
use crate::files::{self, beside, replace};
use crate::local::{admin_actor, open_broker, refused_or_usage};
use crate::{Failure, Outcome, output};

/// How long before now a device's certificate is valid, for clocks that differ slightly.
const CERTIFICATE_LEEWAY: Duration = Duration::minutes(5);

/// What the broker calls this machine's key.
#[derive(Serialize, Deserialize)]
struct Registration {
    id: DeviceId,
    broker: String,
}

/// This machine's device, enrolled at one broker.
pub struct LocalDevice {
    id: DeviceId,
    key: SigningKey,
    key_path: PathBuf,
}

/// Where the device key is kept.
fn key_file() -> Result<PathBuf, Failure> {
    files::config_file("AIRLOCK_DEVICE_KEY", "device.key")
}

fn read_key(path: &Path) -> Result<Option<SigningKey>, Failure> {
    let Some(text) = files::read_if_present(path)? else { return Ok(None) };
    let key = SigningKey::from_pkcs8_pem(&text)
        .map_err(|e| anyhow!("the device key {} is damaged ({e}): delete it and enroll again", path.display()))?;
    Ok(Some(key))
}

fn read_registration(key_path: &Path) -> Result<Option<Registration>, Failure> {
    let path = beside(key_path, ".json");
    let Some(text) = files::read_if_present(&path)? else { return Ok(None) };
    let registration = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is damaged ({e}): delete it and enroll again", path.display()))?;
    Ok(Some(registration))
}

impl LocalDevice {
    /// This machine's device at `broker`, if it enrolled there. A key that went missing or
    /// cannot be read is warned about, and calls go without a device (untrusted), so that
    /// `airlock device disable` still works.
    pub fn load_for(broker: &str) -> Result<Option<Self>, Failure> {
        let key_path = key_file()?;
        let Some(registration) = read_registration(&key_path)? else { return Ok(None) };
        if registration.broker != broker {
            return Ok(None);
        }
        match read_key(&key_path) {
            Ok(Some(key)) => Ok(Some(Self { id: registration.id, key, key_path })),
            Ok(None) => {
                eprintln!(
                    "warning: the key of device {} ({}) is missing: calls go without it; disable the device and enroll again",
                    registration.id,
                    key_path.display()
                );
                Ok(None)
            }
            Err(Failure::Usage(error)) => {
                eprintln!("warning: {error:#}; calls go without the device");
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// Where the key is, for libpq's `sslkey`.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The `Airlock-Device-Proof` header for one call.
    pub fn proof(&self, method: &str, path: &str, bearer: &str) -> Result<String, Failure> {
        let random = airlock_broker::secrets::random_bytes().context("no randomness for the device proof")?;
        let nonce: [u8; NONCE_BYTES] = std::array::from_fn(|i| random[i]);
        let call = Call { method, path, bearer };
        Ok(Proof::sign(&self.key, self.id, &call, OffsetDateTime::now_utc(), nonce).header())
    }

    /// Writes a certificate for the key valid until `until`; returns its path.
    pub fn certificate(&self, until: OffsetDateTime) -> Result<PathBuf, Failure> {
        let from = OffsetDateTime::now_utc() - CERTIFICATE_LEEWAY;
        let pem =
            device_tls::device_certificate(&self.key, from, until).context("cannot make the device certificate")?;
        let path = beside(&self.key_path, ".crt");
        replace(&path, pem.as_bytes(), 0o644)?;
        Ok(path)
    }

    /// Whether this device holds `key`.
    pub fn holds(&self, key: &str) -> bool {
        key.parse::<DeviceKey>().is_ok_and(|key| key == DeviceKey::of(&self.key))
    }
}

pub async fn run(command: DeviceCommand) -> Outcome {
    match command {
        DeviceCommand::Enroll { name, remote } => enroll(&remote, name).await,
        DeviceCommand::List { all, remote } => {
            let client = Client::new(&remote)?;
            let devices: Vec<DeviceView> = client.get(if all { "/v1/devices?all=true" } else { "/v1/devices" }).await?;
            print_devices(&devices, remote.json);
            Ok(())
        }
        DeviceCommand::Disable { id, remote } => {
            let id = device_id(&id)?;
            let client = Client::new(&remote)?;
            let done: DisabledDeviceView =
                client.post(&format!("/v1/devices/{id}/disable"), &serde_json::json!({})).await?;
            if remote.json {
                output::json(&done);
            } else {
                println!(
                    "disabled device {id}: {} pending request(s) cancelled, {} grant(s) revoked",
                    done.requests_cancelled, done.grants_revoked
                );
            }
            Ok(())
        }
    }
}

/// `airlock device enroll`: makes this machine's key (or reuses one a failed enrollment left)
/// and registers it at the broker, where it waits for an administrator.
async fn enroll(remote: &Remote, name: Option<String>) -> Outcome {
    let key_path = key_file()?;
    if let Some(registration) = read_registration(&key_path)? {
        return Err(anyhow!(
            "this machine is already enrolled as device {} at {}; to enroll again, disable it (`airlock device disable {}`) and delete {} and {}",
            registration.id,
            registration.broker,
            registration.id,
            key_path.display(),
            beside(&key_path, ".json").display()
        )
        .into());
    }
    let name = match name {
        Some(name) => name,
        None => host_name(),
    };
    let name = DeviceName::parse(&name).map_err(|e| anyhow!("--name: {e}"))?;
    let client = Client::new(remote)?;
    let me: WhoAmI = client.get("/v1/whoami").await?;
    let key = match read_key(&key_path)? {
        Some(key) => key,
        None => {
            let key =
                SigningKey::from_bytes(&airlock_broker::secrets::random_bytes().context("no randomness for the key")?);
            let pem = device_tls::device_key_pem(&key).context("cannot encode the device key")?;
            replace(&key_path, pem.as_bytes(), 0o600)?;
            key
        }
    };
    let public = DeviceKey::of(&key);
    let user = me.name.parse().map_err(|e| anyhow!("the broker named an invalid user: {e}"))?;
    let signature = hex::encode(key.sign(&enrollment_message(&user, &public)).to_bytes());
    let body = EnrollDeviceBody { name: name.to_string(), public_key: public.to_string(), signature };
    let device: DeviceView = client.post("/v1/devices", &body).await?;
    let registration = Registration {
        id: device.id.parse().context("the broker named an invalid device id")?,
        broker: client.base().to_owned(),
    };
    let text = serde_json::to_vec_pretty(&registration).context("cannot write the registration")?;
    replace(&beside(&key_path, ".json"), &text, 0o600)?;
    if remote.json {
        output::json(&device);
    } else {
        println!("enrolled this machine as device {} (`{}`), key {}", device.id, device.name, key_path.display());
        println!("it is trusted once an administrator approves it: airlock admin device approve {}", device.id);
    }
    Ok(())
}

/// The machine's host name as a device name, or `device`.
fn host_name() -> String {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String =
        name.trim().chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    if DeviceName::parse(&name).is_ok() { name } else { "device".to_owned() }
}

fn device_id(text: &str) -> Result<DeviceId, Failure> {
    text.trim().parse().map_err(|_| anyhow!("`{text}` is not a device id").into())
}

fn print_devices(devices: &[DeviceView], json: bool) {
    if json {
        output::json(&devices);
        return;
    }
    let mut table = output::table(&["id", "user", "name", "state", "enrolled", "approved by", "key"]);
    for device in devices {
        table.add_row([
            device.id.clone(),
            device.user.clone(),
            device.name.clone(),
            device.state.clone(),
            output::when(device.enrolled_at),
            device.approved_by.clone().unwrap_or_default(),
            device.public_key[..16].to_owned(),
        ]);
    }
    println!("{table}");
}

/// `airlock admin device …` on the data directory.
pub async fn admin(files: &Files, command: AdminDeviceCommand) -> Outcome {
    let (broker, _) = open_broker(files).await?;
    match command {
        AdminDeviceCommand::Approve { id } => {
            let device = broker.approve_device(device_id(&id)?, &admin_actor()).await.map_err(refused_or_usage)?;
            println!(
                "approved device {} (`{}`) of `{}`: calls proved by it are trusted",
                device.id, device.name, device.user
            );
        }
        AdminDeviceCommand::Disable { id, reason } => {
            let (device, done) =
                broker.disable_device(device_id(&id)?, &admin_actor(), &reason).await.map_err(refused_or_usage)?;
            println!(
                "disabled device {} of `{}`: {} pending request(s) cancelled, {} grant(s) revoked",
                device.id, device.user, done.requests_cancelled, done.grants_revoked
            );
        }
        AdminDeviceCommand::List { user, json } => {
            let user = user.map(|u| u.parse().map_err(|e| anyhow!("{e}"))).transpose()?;
            let devices = broker.devices_of(user.as_ref()).await.map_err(refused_or_usage)?;
            print_devices(&devices.iter().map(DeviceView::new).collect::<Vec<_>>(), json);
        }
    }
    Ok(())
}
