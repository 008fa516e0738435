//! Certificates from a real ACME server (Debian's pebble): an app's domains get certificates
//! that verify against pebble's root, a certificate near its end is renewed, and a domain the
//! server cannot validate ends in ERROR with the server's words while the others serve.

use std::time::{Duration, Instant};

use common::{Daemon, docker_ready, free_port};
use serde_json::Value;
use slipway_testkit::{Authority, HelloRepo, Pebble, unique};

mod common;

#[test]
fn domains_get_certificates_from_an_acme_server_and_a_refused_one_says_why() {
    if !docker_ready() {
        return;
    }
    if !Pebble::installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "pebble is not installed (apt-get install pebble)"
        );
        eprintln!("skipped: pebble is not installed (apt-get install pebble)");
        return;
    }
    let http_port = free_port();
    let pebble = Pebble::start(http_port).unwrap();
    let ingress = format!("127.0.0.1:{http_port}");
    let daemon = Daemon::start(
        "acme",
        &[
            "--ingress",
            &ingress,
            "--https-listen",
            "127.0.0.1:0",
            "--acme-directory",
            &pebble.directory,
            "--acme-ca-cert",
            pebble.ca_cert.to_str().unwrap(),
            "--acme-email",
            "ops@example.com",
        ],
    );
    let name = unique("acme");
    let (first, renewed, refused) = (
        format!("{name}.example.com"),
        format!("www.{name}.example.com"),
        format!("{name}.example.net"),
    );
    // A certificate past its time (not from the ACME server): it is renewed.
    let old = Authority::new();
    old.issue_expired(&daemon.data.path().join("certs"), &renewed, &[&renewed])
        .unwrap();
    // Nothing answers for this one where the ACME server looks.
    pebble.resolve(&refused, "127.0.0.2");

    let repo = HelloRepo::new("v1").unwrap();
    let spec = format!(
        "name: {name}\ndomains:\n  - {{domain: {first}, type: PRIMARY}}\n  - {{domain: {renewed}, type: ALIAS}}\n  - {{domain: {refused}, type: ALIAS}}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n",
        repo.url()
    );
    let spec = slipway_spec::parse_document(&spec).unwrap();
    let v = daemon.api("POST", "/v2/apps", Some(serde_json::json!({"spec": spec})));
    let id = v["app"]["id"].as_str().unwrap().to_string();
    let domains = &v["app"]["domains"];
    assert_eq!(
        domains[0]["phase"], "PENDING",
        "before any deployment: {domains}"
    );
    let dep = v["app"]["pending_deployment"]["id"]
        .as_str()
        .or(v["app"]["in_progress_deployment"]["id"].as_str())
        .unwrap()
        .to_string();
    let d = daemon.wait_for(&id, &dep, |d| {
        d["phase"] == "ACTIVE" || d["phase"] == "ERROR"
    });
    assert_eq!(d["phase"], "ACTIVE", "{d}");

    // Each domain's phase, as the API shows it.
    let phases = |app: &Value| -> Vec<String> {
        app["domains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["phase"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let app = loop {
        let app = daemon.api("GET", &format!("/v2/apps/{id}"), None)["app"].clone();
        if phases(&app) == ["ACTIVE", "ACTIVE", "ERROR"] {
            break app;
        }
        assert!(
            Instant::now() < deadline,
            "the domains did not settle: {}",
            app["domains"]
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("the app's domains: {:#}", app["domains"]);
    let error = app["domains"][2]["error"].as_str().unwrap();
    assert!(
        error.contains(&refused) && error.contains("127.0.0.2"),
        "the ACME server's own words, naming the domain: {error}"
    );
    assert!(app["domains"][0]["certificate_expires_at"].is_string());
    assert_eq!(app["live_url"], format!("http://{first}:{http_port}"));

    // The certificates verify against pebble's root (the renewed one too: the old one was not
    // pebble's) and are served by SNI; the refused domain's failure leaves them serving.
    let https: std::net::SocketAddr = daemon.ingress()["https"].as_str().unwrap().parse().unwrap();
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pebble.root().as_bytes()).unwrap())
        .resolve(&first, https)
        .resolve(&renewed, https)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for host in [&first, &renewed] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = loop {
            match client
                .get(format!("https://{host}:{}/", https.port()))
                .send()
            {
                Ok(r) => break r.text().unwrap(),
                Err(e) => assert!(Instant::now() < deadline, "{host}: {e:?}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(body.starts_with("hello from v1"), "{host}: {body}");
    }
    // The key was written for the owner only.
    let key = daemon
        .data
        .path()
        .join("certs")
        .join(&first)
        .join("key.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_domain_gets_its_certificate_through_the_https_port_alone_with_tls_alpn_01() {
    if !docker_ready() || !Pebble::installed() {
        assert!(
            std::env::var_os("CI").is_none() || !docker_ready(),
            "pebble is not installed (apt-get install pebble)"
        );
        return;
    }
    let (http_port, https_port) = (free_port(), free_port());
    // Pebble validates on the HTTPS port only: nothing it asks goes to plain HTTP.
    let pebble = Pebble::start_with(free_port(), https_port).unwrap();
    let (ingress, https) = (
        format!("127.0.0.1:{http_port}"),
        format!("127.0.0.1:{https_port}"),
    );
    let daemon = Daemon::start(
        "alpn",
        &[
            "--ingress",
            &ingress,
            "--https-listen",
            &https,
            "--acme-directory",
            &pebble.directory,
            "--acme-ca-cert",
            pebble.ca_cert.to_str().unwrap(),
            "--acme-challenge",
            "tls-alpn-01",
        ],
    );
    let name = unique("alpn");
    let domain = format!("{name}.example.org");
    let repo = HelloRepo::new("v1").unwrap();
    let spec = format!(
        "name: {name}\ndomains: [{{domain: {domain}}}]\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n",
        repo.url()
    );
    let spec = slipway_spec::parse_document(&spec).unwrap();
    let v = daemon.api("POST", "/v2/apps", Some(serde_json::json!({"spec": spec})));
    let id = v["app"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let app = daemon.api("GET", &format!("/v2/apps/{id}"), None)["app"].clone();
        match app["domains"][0]["phase"].as_str() {
            Some("ACTIVE") => break,
            Some("ERROR") => panic!("{}", app["domains"]),
            _ => assert!(Instant::now() < deadline, "{}", app["domains"]),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pebble.root().as_bytes()).unwrap())
        .resolve(&domain, https.parse().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match client.get(format!("https://{domain}:{https_port}/")).send() {
            Ok(r) => break r.text().unwrap(),
            Err(e) => assert!(Instant::now() < deadline, "{e:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.starts_with("hello from v1"), "{body}");
}
