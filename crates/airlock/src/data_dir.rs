//! The data directory, private to the user Airlock runs as, whatever the umask: the directory and
//! the directories directly in it 0700, every file directly in it 0600 (the store and its
//! write-ahead log, the keys, the gateway's certificate, the lock), and files made from now on
//! private too (the process's umask becomes 077). Files made by older versions are set right
//! when a command opens the directory.
//!
//! One exception: when we are root and `serve` runs a throwaway PostgreSQL, the server runs as
//! the `postgres` system user, which must pass through `<data>` and `<data>/postgres` to reach its
//! cluster: those two are 0711 then (others may pass through, not list; every file stays 0600).
//!
//! `serve` holds an exclusive lock on `serve.lock` (with its pid inside) for its whole life, so a
//! second `serve` on the same directory stops before touching anything — the store, the keys, the
//! first one's throwaway clusters. The lock is `flock`'s: it goes with the process, a crash
//! included, and is not inherited by the programs `serve` runs.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use airlock_core::catalog::{Catalog, PostgresTarget};
use rustix::fs::Mode;

/// The lock `serve` holds.
pub const SERVE_LOCK: &str = "serve.lock";
/// Where throwaway clusters live, in the data directory.
pub const THROWAWAY_DIR: &str = "postgres";

const PRIVATE_DIR: u32 = 0o700;
/// Private, but others may pass through (for the `postgres` user).
const TRAVERSABLE_DIR: u32 = 0o711;
const PRIVATE_FILE: u32 = 0o600;

/// Why the data directory could not be made private or locked.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot make the data directory `{path}`: {source}")]
    Create { path: String, source: io::Error },
    #[error("cannot read the data directory `{path}`: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot make `{path}` private: {source}")]
    Private { path: String, source: io::Error },
    #[error("cannot lock `{path}`: {source}")]
    Lock { path: String, source: io::Error },
    #[error("another `airlock serve` is using `{dir}` (pid {pid}); stop it first, or give this one another --data-dir")]
    InUse { dir: String, pid: String },
}

/// Makes every file and directory this process creates from now on private to its user.
pub fn private_umask() {
    rustix::process::umask(Mode::from_raw_mode(0o077));
}

/// Whether the data directory must let the `postgres` user through: we are root, and the catalog
/// names a database without an address, for which `serve` runs a throwaway cluster.
pub fn postgres_passes_through(catalog: &Catalog) -> bool {
    rustix::process::geteuid().is_root()
        && catalog.resources().any(|r| matches!(r.postgres, Some(PostgresTarget { address: None, .. })))
}

fn dir_mode(passes_through: bool) -> u32 {
    if passes_through { TRAVERSABLE_DIR } else { PRIVATE_DIR }
}

/// Makes `dir` (creating it if missing) and what is directly in it private; see the module
/// documentation. What is further down (a throwaway cluster's own files) is left as it is.
pub fn make_private(dir: &Path, passes_through: bool) -> Result<(), DataDirError> {
    create(dir)?;
    let mode = dir_mode(passes_through);
    set_mode(dir, mode)?;
    let read = |source| DataDirError::Read { path: dir.display().to_string(), source };
    for entry in fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        // The entry itself, never what a symbolic link points to.
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_file() {
            set_mode(&entry.path(), PRIVATE_FILE)?;
        } else if kind.is_dir() {
            set_mode(&entry.path(), mode)?;
        }
    }
    Ok(())
}

/// The directory throwaway clusters live in, made (if missing) with the data directory's mode.
pub fn throwaway_dir(data_dir: &Path, passes_through: bool) -> Result<std::path::PathBuf, DataDirError> {
    let dir = data_dir.join(THROWAWAY_DIR);
    create(&dir)?;
    set_mode(&dir, dir_mode(passes_through))?;
    Ok(dir)
}

fn create(dir: &Path) -> Result<(), DataDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .map_err(|source| DataDirError::Create { path: dir.display().to_string(), source })
}

/// Sets `path`'s permission bits to `mode` unless they are already; a file gone meanwhile (a
/// write-ahead log checkpointed away) is no error.
fn set_mode(path: &Path, mode: u32) -> Result<(), DataDirError> {
    let private = |source| DataDirError::Private { path: path.display().to_string(), source };
    let current = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata.permissions().mode() & 0o7777,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(private(error)),
    };
    if current == mode {
        return Ok(());
    }
    match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(private),
    }
}

/// `serve`'s hold on the data directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

/// Takes `serve`'s lock on `dir` (creating the directory if missing) and writes our pid in it;
/// refuses if another process holds it.
pub fn lock_for_serve(dir: &Path) -> Result<ServeLock, DataDirError> {
    create(dir)?;
    let path = dir.join(SERVE_LOCK);
    let lock_error = |source| DataDirError::Lock { path: path.display().to_string(), source };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .open(&path)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = match holder.trim() {
                "" => "unknown".to_owned(),
                pid => pid.to_owned(),
            };
            return Err(DataDirError::InUse { dir: dir.display().to_string(), pid });
        }
        Err(TryLockError::Error(source)) => return Err(lock_error(source)),
    }
    file.set_len(0).map_err(lock_error)?;
    writeln!(file, "{}", std::process::id()).map_err(lock_error)?;
    Ok(ServeLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn what_an_older_version_left_readable_is_made_private_and_links_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        for file in ["airlock.db", "airlock.db-wal", "gateway-cert.pem"] {
            fs::write(dir.join(file), "x").unwrap();
            fs::set_permissions(dir.join(file), fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::create_dir(dir.join("postgres")).unwrap();
        fs::set_permissions(dir.join("postgres"), fs::Permissions::from_mode(0o755)).unwrap();
        let elsewhere = root.path().join("elsewhere");
        fs::write(&elsewhere, "x").unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("link")).unwrap();

        make_private(&dir, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("postgres")), 0o700);
        for file in ["airlock.db", "airlock.db-wal", "gateway-cert.pem"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
        assert_eq!(mode(&elsewhere), 0o644, "a link's target is not ours to change");

        make_private(&dir, true).unwrap();
        assert_eq!((mode(&dir), mode(&dir.join("postgres"))), (0o711, 0o711));
        assert_eq!(mode(&dir.join("airlock.db")), 0o600);
    }

    #[test]
    fn a_missing_directory_is_made_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("data");
        make_private(&dir, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let postgres = throwaway_dir(&dir, true).unwrap();
        assert_eq!(mode(&postgres), 0o711);
    }

    #[test]
    fn the_serve_lock_is_held_once_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_for_serve(dir.path()).unwrap();
        assert_eq!(mode(&dir.path().join(SERVE_LOCK)) & 0o077, 0, "the lock file is private");
        let error = lock_for_serve(dir.path()).unwrap_err();
        let expected =
            format!("another `airlock serve` is using `{}` (pid {})", dir.path().display(), std::process::id());
        assert!(error.to_string().starts_with(&expected), "{error}");
        drop(held);
        lock_for_serve(dir.path()).expect("free again once the holder is gone");
    }
}
