//! HTTPS through the ingress process: an app's domain served with the certificate of the
//! data directory's `certs/`, plain HTTP redirected to it, and the HTTPS socket handed to a
//! new ingress process with the others.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Daemon, docker_ready};
use slipway_testkit::{Authority, HelloRepo, unique};

mod common;

#[test]
fn an_apps_domain_is_served_over_https_across_an_ingress_upgrade() {
    if !docker_ready() {
        return;
    }
    let daemon = Daemon::start("https", &["--https-listen", "127.0.0.1:0"]);
    let name = unique("tls");
    let domain = format!("{name}.example.com");
    let ca = Authority::new();
    ca.issue(
        &daemon.data.path().join("certs"),
        &domain,
        &[&domain],
        0o600,
    )
    .unwrap();
    let repo = HelloRepo::new("v1").unwrap();
    let spec = format!(
        "name: {name}\ndomains: [{{domain: {domain}, type: PRIMARY}}]\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n",
        repo.url()
    );
    let spec = slipway_spec::parse_document(&spec).unwrap();
    let v = daemon.api("POST", "/v2/apps", Some(serde_json::json!({"spec": spec})));
    let id = v["app"]["id"].as_str().unwrap().to_string();
    let first = v["app"]["pending_deployment"]["id"]
        .as_str()
        .or(v["app"]["in_progress_deployment"]["id"].as_str())
        .unwrap()
        .to_string();
    let d = daemon.wait_for(&id, &first, |d| {
        d["phase"] == "ACTIVE" || d["phase"] == "ERROR"
    });
    assert_eq!(d["phase"], "ACTIVE", "{d}");

    let hello = daemon.ingress();
    let https: std::net::SocketAddr = hello["https"].as_str().unwrap().parse().unwrap();
    let listen: std::net::SocketAddr = hello["listen"].as_str().unwrap().parse().unwrap();
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve(&domain, https)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://{domain}:{}/", https.port());
    let get = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.get(&url).send() {
                Ok(r) => return r,
                Err(e) => assert!(Instant::now() < deadline, "{url}: {e:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let r = get();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(r.text().unwrap().starts_with("hello from v1"));
    let r = client
        .get(format!("http://{domain}:{}/a?b=1", listen.port()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://{domain}:{}/a?b=1", https.port()).as_str()
    );

    // A new ingress process takes the HTTPS socket over with the others.
    let upgrade = Command::new(BIN)
        .args(["ingress", "upgrade", "--data-dir"])
        .arg(daemon.data.path())
        .output()
        .unwrap();
    assert!(
        upgrade.status.success(),
        "{}",
        String::from_utf8_lossy(&upgrade.stderr)
    );
    let old = hello["pid"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{old}/exe")).exists() {
        assert!(Instant::now() < deadline, "the old ingress did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = daemon.ingress();
    assert_ne!(now["pid"], hello["pid"]);
    assert_eq!(now["https"], hello["https"], "the same HTTPS socket serves");
    assert!(get().text().unwrap().starts_with("hello from v1"));
}
