//! The web panel in a real browser: headless Chromium driven over chromedriver, against a real
//! daemon process and the local Docker engine. Screenshots of every page are saved in
//! `target/panel-screenshots/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BIN, Daemon, free_port};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use slipway_testkit::{HelloRepo, unique};

mod common;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Stops a process group, politely and then not.
fn stop_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-TERM", "--", &group])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Daemon {
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("SLIPWAY_API_URL", &self.url)
            .env("SLIPWAY_TOKEN", &self.token)
            .output()
            .unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }
}

// --- chromedriver --------------------------------------------------------------------------------

/// chromedriver, in a process group of its own so that the browsers it starts go with it.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Skips (outside CI) or fails (in CI) with a reason.
fn unavailable(reason: &str) -> Option<Driver> {
    assert!(!in_ci(), "the browser test cannot run in CI: {reason}");
    eprintln!("skipping: {reason} (install Debian's chromium and chromium-driver to run it)");
    None
}

async fn start_chromedriver() -> Option<Driver> {
    use std::os::unix::process::CommandExt;
    let Some(bin) = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| find_in_path("chromedriver"))
    else {
        return unavailable("chromedriver is not installed");
    };
    let port = free_port();
    let child = match Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return unavailable(&format!("{} cannot be started: {e}", bin.display())),
    };
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: tempfile::tempdir().unwrap(),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
            && let Ok(v) = r.json::<Value>().await
            && v["value"]["ready"] == true
        {
            return Some(driver);
        }
        if Instant::now() > deadline {
            return unavailable("chromedriver did not become ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn browser(driver: &Driver) -> Option<Client> {
    let mut options = json!({
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,1000",
            "--lang=en-GB",
            format!("--user-data-dir={}", driver._profile.path().display()),
        ],
    });
    let binary = std::env::var_os("CHROME_BIN")
        .map(PathBuf::from)
        .or_else(|| find_in_path("chromium"))
        .or_else(|| find_in_path("chromium-browser"));
    if let Some(b) = binary {
        options["binary"] = json!(b);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    match ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
    {
        Ok(c) => Some(c),
        Err(e) => {
            unavailable(&format!("Chromium cannot be started by chromedriver: {e}"));
            None
        }
    }
}

// --- Page helpers -------------------------------------------------------------------------------

fn screenshots_dir() -> PathBuf {
    let dir = slipway_testkit::workspace_root().join("target/panel-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves a screenshot of the whole page (the window is made as tall as the page for it).
async fn screenshot(c: &Client, name: &str) {
    let height = c
        .execute(
            "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(1000);
    let tall = height.clamp(1000, 4000) as u32 + 100;
    let _ = c.set_window_size(1280, tall).await;
    if let Ok(png) = c.screenshot().await {
        std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
    }
    let _ = c.set_window_size(1280, 1000).await;
}

/// Waits until the text of the first element matching `css` satisfies `ok`; returns it. On
/// timeout, saves a screenshot named after `what` and fails with the last text seen.
async fn wait_text(
    c: &Client,
    css: &str,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("(no such element)");
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
        {
            if ok(&text) {
                return text;
            }
            last = text;
        }
        if Instant::now() > deadline {
            screenshot(c, &format!("failed-{what}")).await;
            let banner = match c.find(Locator::Css("#banner")).await {
                Ok(b) => b.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("{what}: {css} never matched; last text: {last:?}; banner: {banner:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} is not on the page: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("{css} cannot be clicked: {e}"));
}

async fn active_id(c: &Client) -> String {
    c.active_element()
        .await
        .unwrap()
        .attr("id")
        .await
        .unwrap()
        .unwrap_or_default()
}

/// Waits (briefly) until the element with `id` has focus.
async fn wait_focus(c: &Client, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = active_id(c).await;
        if now == id {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "focus is on {now:?}, not on {id:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn press(c: &Client, key: Key) {
    c.active_element()
        .await
        .unwrap()
        .send_keys(&key.to_string())
        .await
        .unwrap();
}

/// Runs a script in the page that resolves to a value (the last argument is the callback).
async fn eval_async(c: &Client, script: &str) -> Value {
    c.execute_async(script, vec![]).await.unwrap()
}

/// Each component's containers: name → (container ID → image ID).
async fn containers(d: &Daemon, app: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let v = d.get(&format!("/v2/apps/{app}/instances")).await;
    v["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let list = c["instances"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["state"] == "running")
                .map(|i| {
                    (
                        i["id"].as_str().unwrap().to_string(),
                        i["image"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (c["name"].as_str().unwrap().to_string(), list)
        })
        .collect()
}

fn write_spec(dir: &Path, name: &str, repo: &HelloRepo) -> PathBuf {
    let path = dir.join("app.yaml");
    std::fs::write(
        &path,
        format!(
            "name: {name}\ndomains: [{{domain: {name}.example.com, type: PRIMARY}}]\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{url}\", branch: main}}\n    instance_count: 2\n    health_check: {{http_path: /healthz, period_seconds: 0.2}}\nworkers:\n  - name: worker\n    git: {{repo_clone_url: \"{url}\", branch: main}}\n    envs: [{{key: ROLE, value: worker}}]\n    rollout: {{min_ready_seconds: 0.2}}\njobs:\n  - name: migrate\n    kind: PRE_DEPLOY\n    git: {{repo_clone_url: \"{url}\", branch: main}}\n    envs: [{{key: ROLE, value: job}}]\n",
            url = repo.url()
        ),
    )
    .unwrap();
    path
}

// --- The test -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_signs_in_restarts_and_rebuilds_in_a_real_browser() {
    if slipway_testkit::docker().await.is_none() {
        return;
    }
    let Some(driver) = start_chromedriver().await else {
        return;
    };
    let daemon = Arc::new(
        tokio::task::spawn_blocking(|| Daemon::start("panel", &[]))
            .await
            .unwrap(),
    );
    let repo = Arc::new(HelloRepo::new("v1").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let name = unique("panel");
    let spec = write_spec(dir.path(), &name, &repo);
    let out = {
        let (daemon, spec) = (Arc::clone(&daemon), spec.clone());
        tokio::task::spawn_blocking(move || {
            daemon.cli(&["apps", "create", "--spec", spec.to_str().unwrap(), "--wait"])
        })
        .await
        .unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let Some(client) = browser(&driver).await else {
        return;
    };
    // The session is closed (and the browser quits) whether the walk-through passes or not.
    let walk = tokio::spawn(walk_through(
        client.clone(),
        Arc::clone(&daemon),
        Arc::clone(&repo),
        name,
    ));
    let result = walk.await;
    let _ = client.close().await;
    drop(driver);
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn walk_through(c: Client, daemon: Arc<Daemon>, repo: Arc<HelloRepo>, app: String) {
    let minute = Duration::from_secs(60);
    c.goto(&format!("{}/", daemon.url)).await.unwrap();
    wait_text(&c, "#signin-title", minute, "sign-in page", |t| {
        t.contains("Sign in")
    })
    .await;
    wait_focus(&c, "token").await;
    screenshot(&c, "01-sign-in").await;

    // A bad token: a clear error, and still signed out.
    let token = c.find(Locator::Css("#token")).await.unwrap();
    token.send_keys("not-the-token").await.unwrap();
    click(&c, "#signin-submit").await;
    let error = wait_text(&c, "#signin-error", minute, "bad token", |t| !t.is_empty()).await;
    assert!(
        error.contains("not accepted") && error.contains("not valid"),
        "{error}"
    );
    screenshot(&c, "02-sign-in-bad-token").await;

    // The right token: the apps list.
    let token = c.find(Locator::Css("#token")).await.unwrap();
    token.clear().await.unwrap();
    token.send_keys(&daemon.token).await.unwrap();
    token.send_keys(&Key::Enter.to_string()).await.unwrap();
    let row = format!("#apps tr[data-app=\"{app}\"]");
    let text = wait_text(&c, &row, minute, "apps list", |t| t.contains("ACTIVE")).await;
    assert!(text.contains("app created"), "{text}");
    assert!(text.contains("http://"), "the live URL: {text}");
    screenshot(&c, "03-apps").await;

    // The token is in an HttpOnly, SameSite=Strict cookie, nowhere a script or the URL sees it.
    let cookies = c.get_all_cookies().await.unwrap();
    let cookie = cookies
        .iter()
        .find(|k| k.name() == "slipway_token")
        .expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let seen = c
        .execute(
            "return [document.cookie, JSON.stringify(localStorage), JSON.stringify(sessionStorage), location.href].join('|')",
            vec![],
        )
        .await
        .unwrap();
    assert!(!seen.as_str().unwrap().contains(&daemon.token), "{seen}");
    // With the cookie, a change without the panel's header is refused (a forged request).
    let status = eval_async(
        &c,
        &format!(
            "const done = arguments[arguments.length - 1];
             fetch('/v2/apps/{app}/restart', {{method: 'POST', credentials: 'same-origin'}}).then(r => done(r.status));"
        ),
    )
    .await;
    assert_eq!(
        status, 403,
        "a cookie-authenticated change needs X-Slipway-Panel"
    );

    // The app's page: its components by kind, with image, commit and instances.
    click(&c, &format!("{row} a.app-link")).await;
    let web = wait_text(&c, "[data-component=web]", minute, "web component", |t| {
        t.contains("2 of 2 instances running")
    })
    .await;
    assert!(web.contains("commit"), "{web}");
    wait_text(&c, "[data-component=worker]", minute, "worker", |t| {
        t.contains("1 of 1 instance running")
    })
    .await;
    assert_eq!(
        count(&c, "[data-kind=job][data-component=migrate]").await,
        1
    );
    assert_eq!(
        count(&c, "[data-component=web] li[data-state=running]").await,
        2
    );
    // Its domain, served by the active deployment (certificates are the operator's here).
    let domain = wait_text(&c, "#domains", minute, "domains", |t| t.contains("ACTIVE")).await;
    assert!(
        domain.contains(".example.com") && domain.contains("PRIMARY"),
        "{domain}"
    );
    screenshot(&c, "04-app").await;

    // The Actions menu and the restart dialog with the keyboard alone: Enter opens the menu
    // on its first item, arrows move, Enter opens the dialog, Escape closes it and focus
    // returns to the menu's button.
    c.find(Locator::Css("#actions-button"))
        .await
        .unwrap()
        .send_keys(&Key::Enter.to_string())
        .await
        .unwrap();
    wait_focus(&c, "action-restart").await;
    press(&c, Key::Down).await;
    wait_focus(&c, "action-rebuild").await;
    press(&c, Key::Up).await;
    wait_focus(&c, "action-restart").await;
    press(&c, Key::Enter).await;
    assert_eq!(count(&c, "#restart-dialog[open]").await, 1);
    wait_focus(&c, "restart-all").await;
    press(&c, Key::Escape).await;
    assert_eq!(count(&c, "#restart-dialog[open]").await, 0);
    wait_focus(&c, "actions-button").await;

    // Restart only web, through the dialog.
    let before = containers(&daemon, &app).await;
    click(&c, "#actions-button").await;
    click(&c, "#action-restart").await;
    let what = wait_text(&c, "#restart-what", minute, "restart text", |t| {
        !t.is_empty()
    })
    .await;
    assert!(
        what.contains("exact image") && what.contains("does not fetch"),
        "{what}"
    );
    click(&c, "#restart-some").await;
    let migrate = c
        .find(Locator::Css("#restart-component-migrate"))
        .await
        .unwrap();
    assert!(
        !migrate.is_enabled().await.unwrap(),
        "a job is not restartable"
    );
    let why = c
        .find(Locator::Css("#restart-component-migrate-why"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(why.contains("not restartable"), "{why}");
    click(&c, "#restart-component-web").await;
    screenshot(&c, "05-restart-dialog").await;
    click(&c, "#restart-submit").await;
    let phase = wait_text(&c, "#phase", 3 * minute, "restart ACTIVE", |t| {
        t == "ACTIVE" || t == "ERROR"
    })
    .await;
    assert_eq!(phase, "ACTIVE");
    let cause = c
        .find(Locator::Css("#deployment-cause"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(cause, "manual restart");
    wait_text(&c, "#log-build", minute, "restart build log", |t| {
        t.contains("Nothing was built")
    })
    .await;
    wait_text(&c, "#log-deploy", minute, "restart deploy log", |t| {
        t.contains("web")
    })
    .await;
    wait_text(&c, "#steps", minute, "restart steps", |t| {
        t.contains("done")
    })
    .await;
    wait_text(&c, "#log-run", minute, "run log", |t| {
        t.contains("listening on port 8080")
    })
    .await;
    screenshot(&c, "06-restart-deployment").await;

    // Through the API: only web's containers changed, from the same image.
    let after = containers(&daemon, &app).await;
    assert_eq!(after["web"].len(), 2, "{after:?}");
    let old: BTreeSet<&String> = before["web"].keys().collect();
    assert!(
        after["web"].keys().all(|id| !old.contains(id)),
        "every web container is new: {before:?} {after:?}"
    );
    let images: BTreeSet<&String> = before["web"]
        .values()
        .chain(after["web"].values())
        .collect();
    assert_eq!(images.len(), 1, "the same image: {images:?}");
    assert_eq!(
        before["worker"], after["worker"],
        "the worker was not touched"
    );
    assert_eq!(
        before["migrate"], after["migrate"],
        "the job was not touched"
    );

    // A new commit, force-rebuilt without the build cache through the dialog.
    repo.commit_version("v2").unwrap();
    click(&c, "#back-to-app").await;
    wait_text(&c, "[data-component=web]", minute, "app page again", |t| {
        t.contains("2 of 2")
    })
    .await;
    click(&c, "#actions-button").await;
    click(&c, "#action-rebuild").await;
    wait_focus(&c, "rebuild-clear-cache").await;
    let what = c
        .find(Locator::Css("#rebuild-what"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        what.contains("latest commit") && what.contains("builds"),
        "{what}"
    );
    press(&c, Key::Space).await;
    assert!(
        c.find(Locator::Css("#rebuild-clear-cache"))
            .await
            .unwrap()
            .is_selected()
            .await
            .unwrap()
    );
    screenshot(&c, "07-rebuild-dialog").await;
    click(&c, "#rebuild-submit").await;
    let phase = wait_text(&c, "#phase", 5 * minute, "rebuild ACTIVE", |t| {
        t == "ACTIVE" || t == "ERROR"
    })
    .await;
    assert_eq!(phase, "ACTIVE");
    let facts = c
        .find(Locator::Css("#deployment-facts"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        facts.contains("manual force rebuild") && facts.contains("without build cache"),
        "{facts}"
    );
    wait_text(&c, "#log-build", minute, "rebuild build log", |t| {
        t.contains("Successfully built")
    })
    .await;
    wait_text(&c, "#log-build-status", minute, "build log ends", |t| {
        t == "complete"
    })
    .await;
    screenshot(&c, "08-rebuild-deployment").await;

    // The new version answers on the instances' published ports.
    let v = daemon.get(&format!("/v2/apps/{app}/instances")).await;
    let web = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(
        web["image"]["reference"].as_str().map(|r| r.contains(':')),
        Some(true)
    );
    let running: Vec<&Value> = web["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "running")
        .collect();
    assert_eq!(running.len(), 2, "{web}");
    for i in running {
        let published = i["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["container_port"] == 8080)
            .unwrap();
        let (ip, port) = (
            published["host_ip"].as_str().unwrap(),
            published["host_port"].as_u64().unwrap(),
        );
        let body = reqwest::get(format!("http://{ip}:{port}/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.starts_with("hello from v2"), "{body}");
    }

    // A rebuild that fails shows ERROR and why; the active deployment keeps serving.
    repo.write("Dockerfile", "FROM scratch\nNOT AN INSTRUCTION\n")
        .unwrap();
    repo.commit("break the build").unwrap();
    click(&c, "#back-to-app").await;
    wait_text(
        &c,
        "[data-component=web]",
        minute,
        "app page before failing",
        |t| t.contains("2 of 2"),
    )
    .await;
    // This time with the keyboard alone: the menu, the dialog, and its Deploy button.
    c.find(Locator::Css("#actions-button"))
        .await
        .unwrap()
        .send_keys(&Key::Down.to_string())
        .await
        .unwrap();
    wait_focus(&c, "action-restart").await;
    press(&c, Key::Down).await;
    press(&c, Key::Enter).await;
    assert_eq!(count(&c, "#rebuild-dialog[open]").await, 1);
    wait_focus(&c, "rebuild-clear-cache").await;
    press(&c, Key::Tab).await;
    wait_focus(&c, "rebuild-cancel").await;
    press(&c, Key::Tab).await;
    wait_focus(&c, "rebuild-submit").await;
    press(&c, Key::Enter).await;
    let phase = wait_text(&c, "#phase", 5 * minute, "failing rebuild", |t| {
        t == "ACTIVE" || t == "ERROR"
    })
    .await;
    assert_eq!(phase, "ERROR");
    let reason = wait_text(&c, "#failure-reason", minute, "failure reason", |t| {
        !t.is_empty()
    })
    .await;
    assert!(reason.starts_with("At build/"), "{reason}");
    let code = wait_text(&c, "#failure-code", minute, "failure code", |t| {
        !t.is_empty()
    })
    .await;
    assert_eq!(code, "BuildFailed");
    let failure = c
        .find(Locator::Css("#failure"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(failure.contains("keeps serving"), "{failure}");
    wait_text(
        &c,
        "[data-status=ERROR] .reason",
        minute,
        "step reason",
        |t| !t.is_empty(),
    )
    .await;
    screenshot(&c, "09-rebuild-error").await;

    // The deployments, newest first.
    click(&c, "#back-to-app").await;
    let table = wait_text(&c, "#deployments-table tbody", minute, "deployments", |t| {
        t.lines().filter(|l| l.contains("manual")).count() >= 3
    })
    .await;
    assert_eq!(count(&c, "#deployments-table tbody tr").await, 4, "{table}");
    // Read in one go: the section is redrawn whenever the app changes.
    let phases = c
        .execute(
            "return Array.from(document.querySelectorAll('#deployments-table tbody .phase')).map(e => e.textContent)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        phases,
        json!(["ERROR", "ACTIVE", "SUPERSEDED", "SUPERSEDED"])
    );
    screenshot(&c, "10-app-deployments").await;

    // Sign out: the cookie is gone and the API refuses the browser.
    click(&c, "#sign-out").await;
    wait_text(&c, "#signin-title", minute, "signed out", |t| {
        t.contains("Sign in")
    })
    .await;
    let cookies = c.get_all_cookies().await.unwrap();
    assert!(cookies.iter().all(|k| k.name() != "slipway_token"));
    let status = eval_async(
        &c,
        "const done = arguments[arguments.length - 1];
         fetch('/v2/apps', {credentials: 'same-origin'}).then(r => done(r.status));",
    )
    .await;
    assert_eq!(status, 401);
    screenshot(&c, "11-signed-out").await;
}
