//! HTTPS for the API: a certificate given by the operator, or one generated for the daemon's
//! addresses and kept in its data directory. [`crate::server::serve`] serves the API with the
//! acceptor made here.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM form")]
    Pem { path: PathBuf, what: &'static str },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate a certificate")]
    Generate(#[source] rcgen::Error),
    #[error("the certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
    /// A certificate that clients would refuse, or a key that is not its key: what is wrong
    /// and how to fix it, in a sentence.
    #[error("{0}")]
    Unusable(String),
}

/// A certificate (chain) and its private key, in PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The self-signed certificate in `dir` (`cert.pem`, `key.pem`), generated for `names` on
/// first use and kept: clients trust it once (`SLIPWAY_CA_CERT`). The directory is made 0700
/// and the key 0600.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    let generated =
        rcgen::generate_simple_self_signed(names.to_vec()).map_err(TlsError::Generate)?;
    write(
        &files.key,
        generated.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write(&files.cert, generated.cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}

/// How to make a certificate clients accept for `ip`, for the error messages.
fn how_to_make(ip: Option<std::net::IpAddr>) -> String {
    let san = ip.map_or_else(|| "DNS:your.host".to_string(), |ip| format!("IP:{ip}"));
    format!(
        "make one with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj /CN=slipway -addext basicConstraints=critical,CA:FALSE -addext subjectAltName={san} -keyout key.pem -out cert.pem`, or use `--tls self-signed`"
    )
}

/// Checks, before anything is served, that clients will accept the certificate for `ip`
/// (when the API listens on one address, not on all) and that the key is the certificate's:
/// the problems a client would otherwise report only as it connects (`invalid peer
/// certificate: ... CaUsedAsEndEntity`), said with the file and the fix. A certificate
/// issued by a CA the file does not hold is checked for its key, dates and name only as far
/// as its chain allows.
pub fn check(files: &TlsFiles, ip: Option<std::net::IpAddr>) -> Result<(), TlsError> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let (certs, key) = read_files(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_path = files.cert.display();
    if let Err(e) = rustls::sign::CertifiedKey::from_der(certs.clone(), key, &provider) {
        return Err(TlsError::Unusable(match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the key in {} is not the key of the certificate in {cert_path}: give --tls-key the key the certificate was made for",
                files.key.display()
            ),
            other => format!(
                "the certificate in {cert_path} and the key in {} cannot be used together ({other})",
                files.key.display()
            ),
        }));
    }
    // As a client that trusts the chain's last certificate (the certificate itself when it
    // is self-signed) sees it.
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(certs[certs.len() - 1].clone()).is_err() {
        return Ok(());
    }
    let verifier = match rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider,
    )
    .build()
    {
        Ok(v) => v,
        Err(_) => return Ok(()),
    };
    let name = ip.map_or_else(
        || ServerName::try_from("localhost").expect("a valid name"),
        |ip| ServerName::IpAddress(ip.into()),
    );
    let verified = verifier.verify_server_cert(&certs[0], &certs[1..], &name, &[], UnixTime::now());
    let Err(rustls::Error::InvalidCertificate(e)) = verified else {
        return Ok(());
    };
    use rustls::CertificateError as C;
    let fix = how_to_make(ip);
    let problem = match &e {
        C::Expired | C::ExpiredContext { .. } => {
            format!(
                "the certificate in {cert_path} has expired ({e}): clients refuse it; renew it, or {fix}"
            )
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            format!(
                "the certificate in {cert_path} is not valid yet ({e}): check this host's clock, or {fix}"
            )
        }
        C::NotValidForName | C::NotValidForNameContext { .. } if ip.is_some() => format!(
            "the certificate in {cert_path} does not name {}, where the API listens: clients connecting to https://{}:PORT refuse it; {fix}",
            ip.map(|ip| ip.to_string()).unwrap_or_default(),
            ip.map(|ip| ip.to_string()).unwrap_or_default()
        ),
        other if format!("{other:?}").contains("CaUsedAsEndEntity") => format!(
            "the certificate in {cert_path} is a CA certificate (basicConstraints CA:TRUE, which `openssl req -x509` sets unless told otherwise): clients refuse it as a server's own (CaUsedAsEndEntity); {fix}"
        ),
        // Unknown issuer (a chain the file does not hold) and the like: for the clients'
        // trust stores to judge.
        _ => return Ok(()),
    };
    Err(TlsError::Unusable(problem))
}

fn read_files(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&files.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: files.cert.clone(),
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|_| TlsError::Pem {
        path: files.key.clone(),
        what: "private key",
    })?;
    Ok((certs, key))
}

/// The TLS acceptor for a certificate and key (HTTP/2 and HTTP/1.1 offered by ALPN).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let (certs, key) = read_files(files)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::{TlsError, TlsFiles, check};
    use std::net::IpAddr;

    /// A certificate and key in `dir`, made with `edit` applied to params for `names`.
    fn make(
        dir: &std::path::Path,
        tag: &str,
        names: &[&str],
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (TlsFiles, rcgen::KeyPair) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        edit(&mut params);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{tag}.crt")),
            key: dir.join(format!("{tag}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        (files, key)
    }

    fn refused(result: Result<(), TlsError>) -> String {
        match result {
            Err(TlsError::Unusable(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn certificates_clients_would_refuse_are_named_with_their_fix() {
        let dir = tempfile::tempdir().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();

        let (good, _) = make(dir.path(), "good", &["127.0.0.1", "localhost"], |_| {});
        check(&good, Some(loopback)).unwrap();
        check(&good, None).unwrap();

        let (ca, _) = make(dir.path(), "ca", &["127.0.0.1"], |p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        });
        let why = refused(check(&ca, Some(loopback)));
        assert!(
            why.contains("is a CA certificate")
                && why.contains("basicConstraints=critical,CA:FALSE")
                && why.contains("ca.crt"),
            "{why}"
        );

        let (expired, _) = make(dir.path(), "expired", &["127.0.0.1"], |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        let why = refused(check(&expired, Some(loopback)));
        assert!(
            why.contains("has expired") && why.contains("renew it"),
            "{why}"
        );

        let (elsewhere, _) = make(dir.path(), "elsewhere", &["example.com"], |_| {});
        let why = refused(check(&elsewhere, Some(loopback)));
        assert!(
            why.contains("does not name 127.0.0.1") && why.contains("subjectAltName=IP:127.0.0.1"),
            "{why}"
        );
        // Listening on every address, no one name is the clients': the name is not judged.
        check(&elsewhere, None).unwrap();

        let (other, _) = make(dir.path(), "other", &["127.0.0.1"], |_| {});
        let mismatched = TlsFiles {
            cert: good.cert.clone(),
            key: other.key.clone(),
        };
        let why = refused(check(&mismatched, Some(loopback)));
        assert!(
            why.contains("other.key") && why.contains("is not the key of the certificate"),
            "{why}"
        );
    }
}
