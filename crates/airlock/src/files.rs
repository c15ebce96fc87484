//! The files the CLI keeps for the person using it (the login, the device key): where they live
//! (`$VAR`, else `$XDG_CONFIG_HOME/airlock/NAME`, else `~/.config/airlock/NAME`), in a directory
//! made 0700, each replaced whole (written beside, then renamed) with the mode it asks for.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

use crate::Failure;

/// Where the file `name` is kept: `$var` when set, else in the user's configuration directory.
pub fn config_file(var: &str, name: &str) -> Result<PathBuf, Failure> {
    let set = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(file) = set(var) {
        return Ok(file);
    }
    let config = set("XDG_CONFIG_HOME")
        .or_else(|| set("HOME").map(|home| home.join(".config")))
        .ok_or_else(|| anyhow!("cannot tell where to keep {name}: set {var} (or HOME)"))?;
    Ok(config.join("airlock").join(name))
}

/// The text of `path`, or `None` when there is no such file.
pub fn read_if_present(path: &Path) -> Result<Option<String>, Failure> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display()).into()),
    }
}

/// `path` with `suffix` appended to its whole name (`device.key` → `device.key.json`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Makes the directory `path` is in (0700), if it is missing.
pub fn make_parent(path: &Path) -> Result<(), Failure> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .with_context(|| format!("cannot make the directory {}", parent.display()))?;
    Ok(())
}

/// Replaces `path` with `contents`, whole or not at all, with `mode`.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), Failure> {
    make_parent(path)?;
    // Named for this process: two commands writing the same file never share a half-written one.
    let next = beside(path, &format!(".{}.new", std::process::id()));
    let _ = fs::remove_file(&next);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&next)
        .with_context(|| format!("cannot write {}", next.display()))?;
    out.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", next.display()))?;
    out.write_all(contents)
        .and_then(|()| out.sync_all())
        .with_context(|| format!("cannot write {}", next.display()))?;
    fs::rename(&next, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
