//! A real ACME server for tests: Debian's `pebble`, with `pebble-challtestsrv` answering its
//! DNS queries for every name with 127.0.0.1, so that it validates HTTP-01 challenges against
//! the ingress under test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Authority;

/// A running pebble and its DNS server; both are stopped when it is dropped.
#[derive(Debug)]
pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The certificate authority (PEM file) to trust for the ACME server's own HTTPS.
    pub ca_cert: PathBuf,
    management: u16,
    dns_management: u16,
    authority: String,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Why pebble could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PebbleError {
    #[error("{0} is not installed (apt-get install pebble)")]
    Missing(&'static str),
    #[error("starting {what}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} did not start listening")]
    NotListening(&'static str),
}

impl Pebble {
    /// Whether pebble and its DNS server are installed.
    pub fn installed() -> bool {
        ["pebble", "pebble-challtestsrv"].iter().all(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Starts pebble, validating HTTP-01 challenges on `http_port` of 127.0.0.1 (the
    /// ingress's plain-HTTP port).
    pub fn start(http_port: u16) -> Result<Pebble, PebbleError> {
        Pebble::start_with(http_port, free_port())
    }

    /// [`Pebble::start`], validating TLS-ALPN-01 challenges on `tls_port` (the ingress's
    /// HTTPS port).
    pub fn start_with(http_port: u16, tls_port: u16) -> Result<Pebble, PebbleError> {
        if !Pebble::installed() {
            return Err(PebbleError::Missing("pebble"));
        }
        let dir = tempfile::tempdir().map_err(|source| PebbleError::Start {
            what: "a directory for pebble",
            source,
        })?;
        let authority = Authority::new();
        authority
            .issue(dir.path(), "server", &["127.0.0.1", "localhost"], 0o600)
            .map_err(|source| PebbleError::Start {
                what: "pebble's certificate",
                source,
            })?;
        let ca_cert = dir.path().join("ca.pem");
        let write = |path: &PathBuf, text: &str| {
            std::fs::write(path, text).map_err(|source| PebbleError::Start {
                what: "pebble's configuration",
                source,
            })
        };
        write(&ca_cert, &authority.pem)?;
        let (listen, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = config_json(
            listen,
            management,
            (http_port, tls_port),
            &dir.path().join("server"),
        );
        let config_path = dir.path().join("pebble.json");
        write(&config_path, &config)?;
        let mut children = Vec::new();
        let dns_server = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{dns_management}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| PebbleError::Start {
                what: "pebble-challtestsrv",
                source,
            })?;
        children.push(dns_server);
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| PebbleError::Start {
                what: "pebble",
                source,
            })?;
        children.push(pebble);
        let mut pebble = Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_cert,
            management,
            dns_management,
            authority: authority.pem.clone(),
            children,
            _dir: dir,
        };
        for (port, what) in [
            (listen, "pebble"),
            (management, "pebble's management interface"),
            (dns_management, "pebble-challtestsrv"),
        ] {
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    pebble.stop();
                    return Err(PebbleError::NotListening(what));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(pebble)
    }

    /// The root certificate (PEM) pebble's certificates chain to, for clients to trust.
    pub fn root(&self) -> String {
        let client = reqwest::blocking::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.authority.as_bytes())
                    .expect("the test authority's certificate"),
            )
            .build()
            .expect("a client");
        client
            .get(format!("https://127.0.0.1:{}/roots/0", self.management))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .expect("pebble's root certificate")
    }

    /// Makes pebble's DNS answer `host` with `address` (say, one where nothing listens, so
    /// that validation fails).
    pub fn resolve(&self, host: &str, address: &str) {
        reqwest::blocking::Client::new()
            .post(format!("http://127.0.0.1:{}/add-a", self.dns_management))
            .json(&serde_json::json!({"host": host, "addresses": [address]}))
            .send()
            .and_then(|r| r.error_for_status())
            .expect("pebble-challtestsrv takes the address");
    }

    fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_json(
    listen: u16,
    management: u16,
    (http_port, tls_port): (u16, u16),
    tls: &std::path::Path,
) -> String {
    serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": tls.join("cert.pem"),
            "privateKey": tls.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    })
    .to_string()
}
