//! The real `slipway` binary: a daemon process, and the CLI talking to it.

use std::path::Path;
use std::process::{Command, Output};

use common::{BIN, Daemon, free_port};
use serde_json::Value;
use slipway_testkit::{HelloRepo, unique};

mod common;

impl Daemon {
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SLIPWAY_API_URL", &self.url)
            .env("SLIPWAY_TOKEN", &self.token)
            .output()
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_spec(dir: &Path, name: &str, repo: &HelloRepo) -> std::path::PathBuf {
    let path = dir.join("app.yaml");
    std::fs::write(
        &path,
        format!(
            "name: {name}\nregion: ams\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n    instance_count: 2\n    health_check: {{http_path: /healthz, period_seconds: 0.2}}\nworkers:\n  - name: worker\n    git: {{repo_clone_url: \"{}\", branch: main}}\n    envs: [{{key: ROLE, value: worker}}]\n    rollout: {{min_ready_seconds: 0.2}}\n",
            repo.url(),
            repo.url()
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_cli_drives_a_real_daemon() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if rt.block_on(slipway_testkit::docker()).is_none() {
        return;
    }
    let daemon = Daemon::start("cli", &[]);
    assert_eq!(daemon.token.len(), 64, "a generated token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(daemon.data.path().join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let repo = HelloRepo::new("v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("cli");
    let spec = write_spec(dir.path(), &name, &repo);

    // Create and wait: off a terminal, one line per transition, then the table.
    let out = daemon.cli(&["apps", "create", "--spec", spec.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: region: accepted for compatibility"),
        "{err}"
    );
    assert!(err.contains("phase BUILDING"), "{err}");
    assert!(err.contains("deploy/web/instance 2/2 SUCCESS"), "{err}");
    let table = stdout(&out);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("app created") && table.contains("ACTIVE"),
        "{table}"
    );

    // Restart one component by the app's name, JSON for scripts.
    let out = daemon.cli(&[
        "apps",
        "restart",
        &name,
        "--components",
        "web",
        "--wait",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // One JSON object per line: the restart's events as they came, the deployment last.
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let v = lines.last().unwrap();
    assert_eq!(v["deployment"]["phase"], "ACTIVE");
    assert_eq!(v["deployment"]["restart_components"][0], "web");
    assert!(v["deployment"]["progress"]["steps"][0]["started_at"].is_string());
    let id = v["deployment"]["id"].as_str().unwrap();
    let events = &lines[..lines.len() - 1];
    assert!(
        events.iter().all(|e| e["data"]["deployment_id"] == id),
        "only the restart's events: {events:?}"
    );
    for (kind, step) in [("step.started", "deploy"), ("step.finished", "deploy")] {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == kind && e["data"]["step"] == step),
            "no {kind} of {step} in {events:?}"
        );
    }
    assert_eq!(
        events.last().unwrap()["event"],
        "deployment.finished",
        "{events:?}"
    );
    let at = events[0]["data"]["at"].as_str().unwrap();
    assert!(at.contains('.'), "times to the millisecond: {at}");

    // Events of the newest deployment (the restart), as JSON lines.
    let out = daemon.cli(&["apps", "events", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "deployment.created");
    assert_eq!(events.last().unwrap()["event"], "deployment.finished");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "step.finished" && e["data"]["duration_ms"].is_i64())
    );

    // Logs: the build's output, and what the instances write.
    let out = daemon.cli(&["apps", "logs", &name, "web", "--type", "build"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Successfully tagged"),
        "{}",
        stdout(&out)
    );
    let out = daemon.cli(&["apps", "logs", &name, "--type", "run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.contains("-web-") && l.ends_with("listening on port 8080")),
        "{}",
        stdout(&out)
    );

    // Columns chosen with --format, no header.
    let out = daemon.cli(&[
        "apps",
        "list-deployments",
        &name,
        "--format",
        "Cause,Phase",
        "--no-header",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<String> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(rows, ["manual restart ACTIVE", "app created SUPERSEDED"]);

    // Ctrl-C stops the waiting, not the restart: exit 130, and how to follow it again.
    let mut waiting = Command::new(BIN)
        .args(["apps", "restart", &name, "--wait"])
        .env("SLIPWAY_API_URL", &daemon.url)
        .env("SLIPWAY_TOKEN", &daemon.token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line: it follows the restart.
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(waiting.stderr.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("phase "), "{first}");
    Command::new("kill")
        .args(["-INT", &waiting.id().to_string()])
        .status()
        .unwrap();
    let err: String = lines.map_while(Result::ok).collect::<Vec<_>>().join("\n");
    let status = waiting.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let follow = err
        .lines()
        .find_map(|l| l.split_once("follow it again with `")?.1.strip_suffix('`'))
        .unwrap_or_else(|| panic!("no way to follow it again in {err:?}"));
    assert!(
        err.contains("stopped waiting: deployment ") && err.contains("goes on"),
        "{err}"
    );
    let args: Vec<&str> = follow.split_whitespace().skip(1).collect();
    assert_eq!(&args[..2], ["apps", "get-deployment"], "{follow}");
    let out = daemon.cli(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(" ACTIVE in "), "{}", stderr(&out));

    // Errors are one sentence and exit 1.
    let out = daemon.cli(&["apps", "restart", &name, "--components", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: app") && err.contains("no component named \"nope\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // A deployment whose build fails exits 10, BuildFailed's exit code, and says the code.
    repo.write("Dockerfile", "FROM scratch\nNOT AN INSTRUCTION\n")
        .unwrap();
    repo.commit("break it").unwrap();
    let out = daemon.cli(&[
        "apps",
        "create-deployment",
        &name,
        "--force-rebuild",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ERROR BuildFailed (web): "),
        "{}",
        stderr(&out)
    );

    // The same with -o json: the deployment's error names the code and why.
    let out = daemon.cli(&[
        "apps",
        "create-deployment",
        &name,
        "--force-rebuild",
        "--wait",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(v["deployment"]["phase"], "ERROR", "{v}");
    assert_eq!(v["deployment"]["error"]["code"], "BuildFailed", "{v}");
    let message = v["deployment"]["error"]["message"].as_str().unwrap();
    assert!(
        message.to_lowercase().contains("unknown instruction"),
        "{message}"
    );
    let out = daemon.cli(&[
        "apps",
        "list-deployments",
        &name,
        "--format",
        "Phase,Error",
        "--no-header",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = stdout(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(first, "ERROR BuildFailed");

    let out = daemon.cli(&["apps", "delete", &name, "--purge"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = daemon.cli(&["apps", "get", &name]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn the_commands_that_wait_list_the_exit_codes() {
    for command in [
        "create",
        "update",
        "restart",
        "create-deployment",
        "get-deployment",
    ] {
        let out = Command::new(BIN)
            .args(["apps", command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let help = stdout(&out)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for code in [
            "0 ACTIVE",
            "3 another deployment failure",
            "4 CANCELED",
            "10 build failed",
            "11 health check failed",
            "12 job failed",
            "13 Docker unreachable",
            "14 store failure",
            "15 timeout",
        ] {
            assert!(
                help.contains(code),
                "apps {command} --help lacks \"{code}\": {help}"
            );
        }
    }
}

#[test]
fn a_wrong_token_or_no_daemon_is_one_clear_sentence() {
    let out = Command::new(BIN)
        .args(["apps", "list"])
        .env(
            "SLIPWAY_API_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("SLIPWAY_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: cannot reach the Slipway API at http://127.0.0.1:"),
        "{err}"
    );
}

#[test]
fn tokens_are_created_scoped_and_revoked() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if rt.block_on(slipway_testkit::docker()).is_none() {
        return;
    }
    let daemon = Daemon::start("cli", &[]);
    let data = daemon.data.path().to_str().unwrap().to_string();
    let admin = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--data-dir", &data])
            .output()
            .unwrap()
    };
    let with_token = |token: &str, args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("SLIPWAY_API_URL", &daemon.url)
            .env("SLIPWAY_TOKEN", token)
            .output()
            .unwrap()
    };

    let out = admin(&["tokens", "create", "ci-reader", "--read-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reader = stdout(&out).trim().to_string();
    assert!(reader.starts_with("slw_"), "{reader}");
    let out = admin(&["tokens", "create", "deployer", "-o", "json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let writer = v["token"].as_str().unwrap().to_string();
    assert_eq!(v["scope"], "read-write");

    // Only digests are stored.
    let db = std::fs::read(daemon.data.path().join("slipway.db")).unwrap();
    let haystack = String::from_utf8_lossy(&db);
    assert!(!haystack.contains(&reader[4..]) && !haystack.contains(&writer[4..]));

    let out = with_token(&reader, &["apps", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = with_token(&reader, &["apps", "restart", "no-such-app"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("this token is read-only"),
        "{}",
        stderr(&out)
    );
    let out = with_token(&writer, &["apps", "restart", "no-such-app"]);
    assert!(
        stderr(&out).contains("no app with ID or name"),
        "{}",
        stderr(&out)
    );

    let out = admin(&["tokens", "list"]);
    assert!(
        stdout(&out).contains("ci-reader") && stdout(&out).contains("read"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains(&reader), "secrets are never listed");
    let out = admin(&["tokens", "revoke", "ci-reader"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = with_token(&reader, &["apps", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not valid (or was revoked)"),
        "{}",
        stderr(&out)
    );
    let out = with_token("wrong", &["apps", "list"]);
    assert!(stderr(&out).contains("not valid"), "{}", stderr(&out));
}

#[test]
fn https_with_a_self_signed_certificate_and_no_plain_http_beyond_loopback() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if rt.block_on(slipway_testkit::docker()).is_none() {
        return;
    }
    let daemon = Daemon::start("cli", &["--tls", "self-signed"]);
    let cert = daemon.data.path().join("tls/cert.pem");
    assert!(cert.exists(), "the certificate is kept in the data dir");
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(daemon.data.path().join("tls/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let out = Command::new(BIN)
        .args(["apps", "list"])
        .env("SLIPWAY_API_URL", &daemon.url)
        .env("SLIPWAY_TOKEN", &daemon.token)
        .env("SLIPWAY_CA_CERT", &cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ID"), "{}", stdout(&out));
    // Without trusting the certificate, the CLI refuses the connection.
    let out = daemon.cli(&["apps", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).to_lowercase().contains("certificate"),
        "{}",
        stderr(&out)
    );

    // Plain HTTP beyond loopback is refused at start.
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--ingress",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("over plain HTTP, and tokens would cross the network in clear text"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn git_credentials_name_their_scope_or_the_daemon_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret-token\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let token = token.display().to_string();
    let serve = |args: &[&str]| {
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ingress",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env_remove("SLIPWAY_GIT_CREDENTIALS")
            .env_remove("SLIPWAY_GIT_SSH_KEYS")
            .output()
            .unwrap()
    };
    // One token for every remote is no longer a thing.
    let out = serve(&["--git-token-file", &token]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = serve(&["--git-credential", &token]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("expected HOST[:PORT][/PATH-PREFIX]=FILE"),
        "{}",
        stderr(&out)
    );
    let out = serve(&["--git-credential", &format!("https://github.com={token}")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("give the host without a scheme"),
        "{}",
        stderr(&out)
    );
    let out = serve(&["--git-ssh-key", &format!("github.com/acme={token}")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("scoped to a host"),
        "{}",
        stderr(&out)
    );
    let out = serve(&["--git-credential", "github.com/acme=/no/such/file"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read the token file /no/such/file"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing was started before the flags were checked"
    );
}

/// The Python interpreter of a virtualenv with pydo, made on first use. Outside CI, a machine
/// that cannot install it skips the test (saying why); in CI that fails.
fn pydo_python() -> Option<std::path::PathBuf> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if let Some(p) = std::env::var_os("SLIPWAY_PYDO_PYTHON") {
        return Some(p.into());
    }
    let venv = slipway_testkit::workspace_root().join("target/pydo-venv");
    let python = venv.join("bin/python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import pydo"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready() {
        let made = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "pydo"])
                .status()
                .is_ok_and(|s| s.success());
        if !made || !ready() {
            assert!(!in_ci, "pydo could not be installed in {}", venv.display());
            eprintln!(
                "skipping: pydo (App Platform's Python client) could not be installed from PyPI"
            );
            return None;
        }
    }
    Some(python)
}

#[test]
fn app_platforms_own_python_client_drives_slipway_over_https() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if rt.block_on(slipway_testkit::docker()).is_none() {
        return;
    }
    let Some(python) = pydo_python() else { return };
    let daemon = Daemon::start("cli", &["--tls", "self-signed"]);
    let cert = daemon.data.path().join("tls/cert.pem");
    let repo = HelloRepo::new("v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("pydo");
    let spec = dir.path().join("app.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: {name}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{url}\", branch: main}}\n    health_check: {{http_path: /healthz, period_seconds: 0.1}}\nworkers:\n  - name: worker\n    git: {{repo_clone_url: \"{url}\", branch: main}}\n    envs: [{{key: ROLE, value: worker}}]\n    rollout: {{min_ready_seconds: 0.2}}\njobs:\n  - name: migrate\n    kind: PRE_DEPLOY\n    git: {{repo_clone_url: \"{url}\", branch: main}}\n    envs: [{{key: ROLE, value: job}}, {{key: JOB_DURATION_MS, value: \"4000\"}}]\n",
            url = repo.url()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("SLIPWAY_API_URL", &daemon.url)
            .env("SLIPWAY_TOKEN", &daemon.token)
            .env("SLIPWAY_CA_CERT", &cert)
            .output()
            .unwrap()
    };
    let out = cli(&["apps", "create", "--spec", spec.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pydo_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([&daemon.url, &daemon.token, cert.to_str().unwrap(), &name])
        .output()
        .unwrap();
    assert!(out.status.success(), "pydo failed:\n{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        v["restart_all"],
        serde_json::json!(["ACTIVE", "manual restart"])
    );
    assert_eq!(v["restart_web"], serde_json::json!(["ACTIVE", ["web"]]));
    assert_eq!(v["force_build"][0], "ACTIVE");
    assert_eq!(v["force_build"][1], "manual force rebuild");
    assert_eq!(v["force_build"][2].as_str().map(str::len), Some(40));
    assert_eq!(v["list"][0], 4);
    assert_eq!(
        v["list"][1],
        serde_json::json!([
            "manual force rebuild",
            "manual restart",
            "manual restart",
            "app created"
        ])
    );
    assert_eq!(v["get"][0], true);
    assert_eq!(v["get"][1], v["get"][2], "every step succeeded");
    assert_eq!(v["cancel"], "CANCELED");

    // The canceled deployment left the force rebuild active, and the app serving.
    let out = cli(&["apps", "get", &name, "-o", "json"]);
    let app: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        app["app"]["active_deployment"]["cause"],
        "manual force rebuild"
    );
}

/// `openssl req -x509`, the usual way to make a certificate, marks it as a CA, which clients
/// refuse as a server's: the daemon says so at start, with the fix, and starts nothing.
#[test]
fn a_certificate_clients_would_refuse_stops_the_daemon_at_start_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl, to make the certificate");
    assert!(made.status.success(), "{}", stderr(&made));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ingress",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env_remove("SLIPWAY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("is a CA certificate")
            && err.contains(&cert.display().to_string())
            && err.contains("basicConstraints=critical,CA:FALSE"),
        "{err}"
    );
    assert!(!data.join("ingress.sock").exists(), "nothing was started");
}
