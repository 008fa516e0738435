//! Where the daemon keeps its state, and the token and daemon ID files in it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;

/// `$XDG_DATA_HOME/slipway`, else `~/.local/share/slipway`.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("slipway");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/slipway")
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Creates a directory (and its missing parents) with mode 0700, or makes an existing one of
/// this user 0700 when others could enter it.
pub(crate) fn private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create the directory {}", path.display()))?;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the mode of {}", path.display()))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        if meta.uid() != rustix::process::geteuid().as_raw() {
            anyhow::bail!(
                "{} has mode {mode:04o} and belongs to another user: give the daemon a data directory of its own user (--data-dir)",
                path.display()
            );
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set the mode of {} to 0700", path.display()))?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{mode:04o}"),
            "other users could enter this directory; its mode is now 0700"
        );
    }
    Ok(())
}

/// Refuses a secret file that users other than its owner may read or change: the error names
/// the file, its mode and the fix. A missing file is not refused (it is made later, 0600).
pub(crate) fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {what} {}", path.display())),
    };
    let mode = meta.mode() & 0o7777;
    if meta.is_file() && mode & 0o077 != 0 {
        anyhow::bail!(
            "{what} {path} has mode {mode:04o}: other users of this host can read it. Run `chmod 600 {path}` (and replace the secret if they may have read it), then start again",
            path = path.display()
        );
    }
    Ok(())
}

/// Reads a small file, or creates it (mode 0600) with `make()`'s value.
pub(crate) fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(v) if !v.trim().is_empty() => return Ok(v.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let value = make();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{value}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(value)
}
