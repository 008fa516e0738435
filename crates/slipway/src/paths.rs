//! Where the daemon keeps its state, and the token and daemon ID files in it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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

/// Reads a small secret file, or creates it (mode 0600) with `make()`'s value.
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
