//! SECRET envs, encrypted at rest.
//!
//! A SECRET env's value is stored (in the app's spec and in every deployment's) as
//! `EV[1:<base64 of nonce and ciphertext>]`, sealed with ChaCha20-Poly1305 under a key kept
//! in the data directory (`secret.key`, mode 0600). The API returns it in that form, as App
//! Platform does; a spec sent back with the sealed value keeps it. The engine opens values
//! only where they are used: a container's environment, a build's arguments, a fetch's token.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use slipway_spec::{AppSpec, EnvType, EnvVar};

use crate::EngineError;

const PREFIX: &str = "EV[1:";

/// The daemon's key for SECRET envs.
pub(crate) struct Secrets {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

impl Secrets {
    /// The key at `path`, made (32 random bytes, mode 0600) when missing.
    pub(crate) fn load_or_create(path: &Path) -> Result<Secrets, EngineError> {
        let err = |source| EngineError::DataDir {
            path: path.to_path_buf(),
            source,
        };
        let key = match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => bytes,
            Ok(_) => {
                return Err(err(std::io::Error::other(
                    "the secret key must be 32 bytes; restore it from a backup",
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(err)?;
                f.write_all(&key).map_err(err)?;
                key
            }
            Err(e) => return Err(err(e)),
        };
        Ok(Secrets {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    fn seal(&self, plain: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, plain.as_bytes())
            .expect("encryption of a short value cannot fail");
        let mut bytes = nonce.to_vec();
        bytes.extend(sealed);
        format!("{PREFIX}{}]", STANDARD.encode(bytes))
    }

    /// A value as it was given: sealed values are opened, others returned as they are.
    pub(crate) fn open(&self, value: &str) -> Result<String, EngineError> {
        let Some(body) = value.strip_prefix(PREFIX).and_then(|v| v.strip_suffix(']')) else {
            return Ok(value.to_string());
        };
        let fail = || EngineError::Secret;
        let bytes = STANDARD.decode(body).map_err(|_| fail())?;
        if bytes.len() < 12 {
            return Err(fail());
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }

    /// A copy of a spec with every sealed value opened, for use (never for storing).
    pub(crate) fn open_spec(&self, spec: &AppSpec) -> Result<AppSpec, EngineError> {
        let mut spec = spec.clone();
        let open = |envs: &mut Vec<EnvVar>| -> Result<(), EngineError> {
            for e in envs.iter_mut() {
                if let Some(v) = &e.value {
                    e.value = Some(self.open(v)?);
                }
            }
            Ok(())
        };
        open(&mut spec.envs)?;
        for c in &mut spec.services {
            open(&mut c.envs)?;
        }
        for c in &mut spec.workers {
            open(&mut c.envs)?;
        }
        for c in &mut spec.jobs {
            open(&mut c.envs)?;
        }
        for c in &mut spec.databases {
            open(&mut c.envs)?;
        }
        Ok(spec)
    }

    /// Seals the plain values of every SECRET env of a spec.
    pub(crate) fn seal_spec(&self, spec: &mut AppSpec) {
        let seal = |envs: &mut Vec<EnvVar>| {
            for e in envs.iter_mut() {
                if e.kind == Some(EnvType::Secret)
                    && let Some(v) = &e.value
                    && !v.starts_with(PREFIX)
                {
                    e.value = Some(self.seal(v));
                }
            }
        };
        seal(&mut spec.envs);
        spec.services.iter_mut().for_each(|c| seal(&mut c.envs));
        spec.workers.iter_mut().for_each(|c| seal(&mut c.envs));
        spec.jobs.iter_mut().for_each(|c| seal(&mut c.envs));
        spec.databases.iter_mut().for_each(|c| seal(&mut c.envs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_sealed_once_and_open_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let secrets = Secrets::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut spec = slipway_spec::parse_spec(
            "name: shop\nservices:\n  - name: web\n    image: {repository: a}\n    envs:\n      - {key: TOKEN, value: hunter2, type: SECRET}\n      - {key: PLAIN, value: visible}\n",
        )
        .unwrap()
        .spec;
        secrets.seal_spec(&mut spec);
        let sealed = spec.services[0].envs[0].value.clone().unwrap();
        assert!(
            sealed.starts_with("EV[1:") && !sealed.contains("hunter2"),
            "{sealed}"
        );
        assert_eq!(spec.services[0].envs[1].value.as_deref(), Some("visible"));
        secrets.seal_spec(&mut spec);
        assert_eq!(
            spec.services[0].envs[0].value.as_deref(),
            Some(sealed.as_str()),
            "sealed once"
        );
        assert_eq!(secrets.open(&sealed).unwrap(), "hunter2");
        // The same key after a restart; another key cannot open it.
        assert_eq!(
            Secrets::load_or_create(&path)
                .unwrap()
                .open(&sealed)
                .unwrap(),
            "hunter2"
        );
        let other = Secrets::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open(&sealed).is_err());
    }
}
