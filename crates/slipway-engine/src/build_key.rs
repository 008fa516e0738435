//! The build key: a digest of everything that goes into a build, kept on the image's
//! `slipway.build-key` label and with the deployment, so that a build whose inputs did not
//! change reuses the previous image.
//!
//! The inputs include the values of build-time envs, SECRET ones among them, and the label is
//! readable by anyone who can inspect the image. A plain hash of them would let such a reader
//! find a short secret by trying values; the key is therefore an HMAC-SHA256 under a key of the
//! installation ([`BuildKeySecret`], kept in the data directory as `build.key`), which nobody
//! without that file can compute.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::EngineError;

/// The installation's key for build keys: 32 random bytes.
#[derive(Clone)]
pub struct BuildKeySecret([u8; 32]);

impl std::fmt::Debug for BuildKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BuildKeySecret(..)")
    }
}

impl BuildKeySecret {
    /// A new random key (an engine given it computes build keys no other engine shares, so
    /// that nothing built under another key is reused).
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        BuildKeySecret(key)
    }

    pub fn from_bytes(key: [u8; 32]) -> Self {
        BuildKeySecret(key)
    }

    /// The key in the file at `path`, which is created (32 random bytes, mode 0600 whatever
    /// the umask) when missing. A file whose mode lets anyone but its owner read or write it is
    /// refused, as is one that does not hold 32 bytes.
    pub fn load_or_create(path: &Path) -> Result<Self, EngineError> {
        let io = |source| EngineError::DataDir {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(meta) => return Self::read(path, &meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        // Written whole under another name, then linked into place: the key file is never seen
        // half written, and when two processes race, both end up with the one that was linked.
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let dir = path.parent().unwrap_or(Path::new("."));
        let temp = dir.join(format!(
            ".{}.{}",
            path.file_name()
                .map_or("key".into(), |n| n.to_string_lossy()),
            uuid::Uuid::new_v4().simple()
        ));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            // The mode given at creation is narrowed by the umask, never widened; this sets
            // exactly 0600 (a umask of 0277 would otherwise leave the owner unable to read it).
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(&key)?;
            file.sync_all()?;
            match std::fs::hard_link(&temp, path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                linked => linked.map(|()| true),
            }
        })();
        let _ = std::fs::remove_file(&temp);
        if written.map_err(io)? {
            tracing::info!(path = %path.display(), "created the build-key secret");
            Ok(BuildKeySecret(key))
        } else {
            let meta = std::fs::metadata(path).map_err(io)?;
            Self::read(path, &meta)
        }
    }

    fn read(path: &Path, meta: &std::fs::Metadata) -> Result<Self, EngineError> {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(EngineError::KeyFileMode {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(|source| EngineError::DataDir {
            path: path.to_path_buf(),
            source,
        })?;
        let key: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| EngineError::DataDir {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "the build-key secret must be 32 bytes, not {}; remove the file to make a new one (every app is then built once more)",
                bytes.len()
            )),
        })?;
        Ok(BuildKeySecret(key))
    }

    /// The build key of a build's inputs: HMAC-SHA256 under this key, in hex.
    pub(crate) fn build_key(
        &self,
        commit: &str,
        source_dir: &str,
        dockerfile: &str,
        args: &std::collections::BTreeMap<String, String>,
    ) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for part in [commit, source_dir, dockerfile] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        for (k, v) in args {
            mac.update(k.as_bytes());
            mac.update(b"=");
            mac.update(v.as_bytes());
            mac.update(&[0]);
        }
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_spec::error_chain;
    use std::collections::BTreeMap;

    const UNDER_UMASK: &str = "SLIPWAY_TEST_BUILD_KEY_PATH";

    /// Run again by the test below in a process of its own whose umask is 0277 (it would
    /// make a file created with mode 0600 unreadable by its owner): makes the key there.
    #[test]
    fn make_the_key_under_the_umask_of_the_caller() {
        if let Some(path) = std::env::var_os(UNDER_UMASK) {
            BuildKeySecret::load_or_create(Path::new(&path)).unwrap();
        }
    }

    #[test]
    fn the_key_file_is_made_once_private_whatever_the_umask_and_refused_when_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build.key");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 0277 && exec \"$0\" --exact build_key::tests::make_the_key_under_the_umask_of_the_caller --quiet")
            .arg(std::env::current_exe().unwrap())
            .env(UNDER_UMASK, &path)
            .status()
            .unwrap();
        assert!(status.success());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let made = BuildKeySecret::load_or_create(&path).unwrap();
        let again = BuildKeySecret::load_or_create(&path).unwrap();
        let args = BTreeMap::from([("TOKEN".to_string(), "x".to_string())]);
        assert_eq!(
            made.build_key("c", "", "Dockerfile", &args),
            again.build_key("c", "", "Dockerfile", &args),
            "the same key after a restart"
        );
        assert_ne!(
            made.build_key("c", "", "Dockerfile", &args),
            BuildKeySecret::random().build_key("c", "", "Dockerfile", &args),
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = BuildKeySecret::load_or_create(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("build.key") && err.contains("644") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let err = error_chain(&BuildKeySecret::load_or_create(&path).unwrap_err());
        assert!(err.contains("32 bytes"), "{err}");
    }
}
