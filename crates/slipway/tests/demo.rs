//! `slipway demo` interrupted with Ctrl-C while its app is being deployed: it stops, removes
//! everything it made (containers, networks, volumes, images, its data directory, its ingress
//! process) and says so; a second Ctrl-C does not cut the clean-up short.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, docker_ready};
use slipway_testkit::Janitor;

mod common;

/// SIGKILL for the demo if the test fails before it has ended.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// The objects of a kind that the demo's daemon made (images: built).
fn labelled(kind: &[&str], daemon_id: &str) -> Vec<String> {
    let mut all = Vec::new();
    for key in ["slipway.daemon", "slipway.image.daemon"] {
        let mut args = kind.to_vec();
        let filter = format!("label={key}={daemon_id}");
        args.extend(["-q", "--filter", &filter]);
        let out = Command::new("docker").args(&args).output().unwrap();
        all.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    all
}

#[test]
fn ctrl_c_during_the_demo_removes_everything_it_made() {
    if !docker_ready() {
        return;
    }
    let mut demo = Command::new(BIN)
        .args(["demo", "--instances", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(demo.id());
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    // "API ...  ingress ...  data DIR  daemon ID ID", then the app being created.
    let (mut data, mut daemon_id) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((_, rest)) = line.split_once("  data ")
            && let Some((dir, id)) = rest.split_once("  daemon ID ")
        {
            data = Some(std::path::PathBuf::from(dir.trim()));
            daemon_id = Some(id.trim().to_string());
        }
        if line.contains("Creating app hello-demo") {
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not get going");
    }
    let (data, daemon_id) = (
        data.expect("the data dir"),
        daemon_id.expect("the daemon ID"),
    );
    // Whatever the test finds, nothing stays behind.
    let _janitor = Janitor::new(&daemon_id);
    // Its first deployment under way: its image being built or its containers started.
    let deadline = Instant::now() + Duration::from_secs(120);
    while labelled(&["ps", "-a"], &daemon_id).is_empty()
        && labelled(&["network", "ls"], &daemon_id).is_empty()
    {
        assert!(Instant::now() < deadline, "the demo made nothing to remove");
        std::thread::sleep(Duration::from_millis(100));
    }
    let interrupt = || {
        Command::new("kill")
            .args(["-INT", &demo.id().to_string()])
            .status()
            .unwrap();
    };
    interrupt();
    std::thread::sleep(Duration::from_millis(300));
    interrupt();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = demo.wait().unwrap();
    let said = rest.join("\n");
    assert!(
        !status.success(),
        "an interrupted demo does not say it succeeded"
    );
    assert!(
        said.contains("Interrupted: everything the demo created has been removed."),
        "{said}"
    );
    for kind in [
        &["ps", "-a"][..],
        &["network", "ls"],
        &["volume", "ls"],
        &["images", "-a"],
    ] {
        assert_eq!(
            labelled(kind, &daemon_id),
            Vec::<String>::new(),
            "docker {kind:?} still lists objects of the demo"
        );
    }
    assert!(!data.exists(), "{} is left behind", data.display());
    let ingress = Command::new("pgrep")
        .args(["-f", &format!("ingress --data-dir {}", data.display())])
        .output()
        .unwrap();
    assert!(
        ingress.stdout.is_empty(),
        "its ingress process runs on: {}",
        String::from_utf8_lossy(&ingress.stdout)
    );
}
