//! `slipway serve --ingress-admin-address`: the ingress's health and metrics on an address of
//! their own.

use std::time::{Duration, Instant};

use common::{Daemon, docker_ready, free_port};

mod common;

#[test]
fn the_daemon_serves_the_ingress_health_and_metrics_on_their_own_address() {
    if !docker_ready() {
        return;
    }
    let admin = format!("127.0.0.1:{}", free_port());
    let _daemon = Daemon::start("ingress-admin", &["--ingress-admin-address", &admin]);
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        match http.get(format!("http://{admin}/healthz")).send() {
            Ok(r) if r.status() == 200 => break r.text().unwrap(),
            _ => {
                assert!(Instant::now() < deadline, "/healthz never answered 200");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(
        health.starts_with("ok: 0 apps, 0 backends in rotation"),
        "{health}"
    );
    let r = http.get(format!("http://{admin}/metrics")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().unwrap();
    assert!(
        text.contains(
            "# TYPE slipway_ingress_routed_backends gauge\nslipway_ingress_routed_backends 0\n"
        ),
        "{text}"
    );
}
