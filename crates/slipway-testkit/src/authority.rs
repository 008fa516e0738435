//! A certificate authority of a test's own, which signs the certificates the ingress serves,
//! and which the test's clients trust.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// Its certificate, for the clients to trust.
    pub pem: String,
}

impl Authority {
    pub fn new() -> Authority {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("parameters without names");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "slipway test authority");
        let key = rcgen::KeyPair::generate().expect("a key");
        let pem = params
            .self_signed(&key)
            .expect("a self-signed authority")
            .pem();
        Authority {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// Writes a certificate for `names` to `dir/<tag>/cert.pem` and its key to
    /// `dir/<tag>/key.pem` with `mode`, as the ingress reads them.
    pub fn issue(&self, dir: &Path, tag: &str, names: &[&str], mode: u32) -> std::io::Result<()> {
        self.issue_with(dir, tag, names, mode, |_| {})
    }

    /// [`Authority::issue`] of a certificate that ended long ago (valid in 2020 only): one
    /// an ACME client must replace.
    pub fn issue_expired(&self, dir: &Path, tag: &str, names: &[&str]) -> std::io::Result<()> {
        self.issue_with(dir, tag, names, 0o600, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issue_with(
        &self,
        dir: &Path,
        tag: &str,
        names: &[&str],
        mode: u32,
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> std::io::Result<()> {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(std::io::Error::other)?;
        edit(&mut params);
        let key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(std::io::Error::other)?;
        let pair = dir.join(tag);
        std::fs::create_dir_all(&pair)?;
        std::fs::write(pair.join("cert.pem"), cert.pem())?;
        let key_path = pair.join("key.pem");
        std::fs::write(&key_path, key.serialize_pem())?;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode))
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Default for Authority {
    fn default() -> Self {
        Authority::new()
    }
}
