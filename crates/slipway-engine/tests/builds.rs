//! Build reuse, the build cache and image retention, against real Docker and git.

mod common;

use std::time::Duration;

use common::{containers, wait_ok};
use slipway_engine::{Engine, EngineConfig, LogKind};
use slipway_spec::{AppSpec, Deployment, EnvScope, EnvVar, parse_spec};
use slipway_testkit::{HelloRepo, Janitor, unique};

fn env_var(key: &str, value: &str, scope: EnvScope) -> EnvVar {
    EnvVar {
        key: key.into(),
        value: Some(value.into()),
        scope: Some(scope),
        ..EnvVar::default()
    }
}

async fn built_at(env: &common::Env, app: &str) -> String {
    let web = &containers(env, app).await["web"][0];
    common::read_file(&env.docker, web, "/built-at").await
}

fn web(d: &Deployment) -> &slipway_spec::DeploymentComponent {
    d.component("web").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_are_reused_when_nothing_changed_and_the_cache_can_be_cleared() {
    let Some(env) = common::env().await else {
        return;
    };
    let repo = HelloRepo::new("v1").unwrap();
    // A RUN step that records when it ran: it keeps its value when it comes from the cache.
    // The ENV step makes this build's layers its own: builds of the same steps running at the
    // same time in other tests would otherwise each make a layer for them, and the cache
    // could pick either.
    let name = unique("builds");
    repo.write(
        "Dockerfile",
        &format!("FROM scratch\nENV STAMP_TEST={name}\nCOPY hello /hello\nRUN [\"/hello\", \"stamp\", \"/built-at\"]\nCOPY VERSION /VERSION\nCMD [\"/hello\"]\n"),
    )
    .unwrap();
    repo.write(".dockerignore", "notes/\n").unwrap();
    repo.write("notes/todo.txt", "not for the image").unwrap();
    repo.commit("stamp the build").unwrap();
    let spec: AppSpec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    {}\n    {}\n",
        common::git(&repo),
        common::HEALTH
    ))
    .unwrap()
    .spec;
    let (app, first) = env.engine.create_app(spec.clone()).await.unwrap();
    let first = wait_ok(&env, &first).await;
    let stamp = built_at(&env, &app.id).await;

    // Only a run-time env changes: the previous build is reused.
    let mut runtime_change = spec.clone();
    runtime_change.services[0]
        .envs
        .push(env_var("GREETING", "hi", EnvScope::RunTime));
    let (_, d) = env
        .engine
        .update_app(&app.id, runtime_change.clone())
        .await
        .unwrap();
    let reused = wait_ok(&env, &d).await;
    assert!(web(&reused).build_reused);
    assert_eq!(web(&reused).image, web(&first).image);
    let step = &reused.progress.steps[0].steps[0];
    assert_eq!(step.message_base.as_deref(), Some("previous build reused"));
    let log = env
        .engine
        .store()
        .read_log(&reused.id, LogKind::Build, None, 0)
        .await
        .unwrap();
    assert!(
        log.iter().any(|l| l.line.contains("previous build reused")),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|l| l.line.contains("Step 1/")),
        "nothing was built: {log:?}"
    );

    // A build-time env is an input of the build: it is built again.
    let mut build_change = runtime_change;
    build_change.services[0]
        .envs
        .push(env_var("FLAVOUR", "b", EnvScope::BuildTime));
    let (_, d) = env.engine.update_app(&app.id, build_change).await.unwrap();
    let rebuilt = wait_ok(&env, &d).await;
    assert!(!web(&rebuilt).build_reused);
    assert_ne!(web(&rebuilt).build_key, web(&first).build_key);

    // A force rebuild always builds; with the layer cache, the RUN step's output is kept.
    let d = env
        .engine
        .create_deployment(&app.id, true, false)
        .await
        .unwrap();
    let forced = wait_ok(&env, &d).await;
    assert!(!web(&forced).build_reused);
    let log = env
        .engine
        .store()
        .read_log(&forced.id, LogKind::Build, None, 0)
        .await
        .unwrap();
    assert!(
        log.iter().any(|l| l.line.contains("Using cache")),
        "{log:?}"
    );
    assert_eq!(
        built_at(&env, &app.id).await,
        stamp,
        "the cached RUN step kept its value"
    );

    // With the cache cleared, the RUN step runs again.
    let d = env
        .engine
        .create_deployment(&app.id, true, true)
        .await
        .unwrap();
    assert!(d.clear_build_cache);
    let cleared = wait_ok(&env, &d).await;
    let log = env
        .engine
        .store()
        .read_log(&cleared.id, LogKind::Build, None, 0)
        .await
        .unwrap();
    assert!(
        log.iter()
            .any(|l| l.line.contains("without the build cache")),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|l| l.line.contains("Using cache")),
        "{log:?}"
    );
    assert_ne!(
        built_at(&env, &app.id).await,
        stamp,
        "the RUN step ran again"
    );

    // .dockerignore kept the notes out of the image.
    let web_container = &containers(&env, &app.id).await["web"][0];
    let listing = env
        .docker
        .inspect_container(web_container, None)
        .await
        .unwrap();
    assert!(listing.id.is_some());
    let notes = {
        use futures::StreamExt;
        let options = bollard::query_parameters::DownloadFromContainerOptions {
            path: "/notes".into(),
        };
        let mut s = env
            .docker
            .download_from_container(web_container, Some(options));
        s.next().await
    };
    assert!(
        matches!(notes, Some(Err(_))),
        "the ignored directory is not in the image"
    );

    // Nothing changed since: a deployment without force reuses the build.
    let d = env
        .engine
        .create_deployment(&app.id, false, false)
        .await
        .unwrap();
    assert!(web(&wait_ok(&env, &d).await).build_reused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_most_recent_images_are_kept() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("retention");
    let _janitor = Janitor::new(&daemon_id);
    let data = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(data.path());
    config.allow_local_sources = true;
    config.daemon_id = daemon_id.clone();
    config.image_retention = 2;
    let engine = Engine::start(config, docker.clone()).await.unwrap();
    let repo = HelloRepo::new("v1").unwrap();
    let spec = parse_spec(&format!(
        "name: {}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n",
        unique("keep"),
        repo.url()
    ))
    .unwrap()
    .spec;
    let (app, d) = engine.create_app(spec).await.unwrap();
    let mut images = vec![
        engine
            .wait(&app.id, &d.id)
            .await
            .unwrap()
            .component("web")
            .unwrap()
            .image
            .clone()
            .unwrap()
            .id,
    ];
    for v in 2..=4 {
        repo.commit_version(&format!("v{v}")).unwrap();
        let d = engine
            .create_deployment(&app.id, true, false)
            .await
            .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(120), engine.wait(&app.id, &d.id))
            .await
            .unwrap()
            .unwrap();
        images.push(d.component("web").unwrap().image.clone().unwrap().id);
    }
    // Old images are removed just after the deployment became ACTIVE.
    let builder = slipway_build::ImageBuilder::new(docker);
    let mut present = Vec::new();
    for _ in 0..100 {
        present.clear();
        for id in &images {
            present.push(builder.image_id(id).await.unwrap().is_some());
        }
        if present == [false, false, true, true] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        present,
        [false, false, true, true],
        "the two most recent images are kept"
    );
}

/// A build context (a tar archive) of the given files.
fn context(files: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, data.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap()
}

/// The classic builder holds nothing on a layer it took from the cache until its next step
/// uses it, so another build's clean-up can remove the layer in between. Here that is made to
/// happen every time: the next step is an `ADD` from a URL, which the daemon fetches before it
/// uses the layer, and the server that answers removes the layer first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_cached_layer_is_removed_under_it_is_run_again() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("vanish");
    let _janitor = Janitor::new(&daemon_id);
    let builder = slipway_build::ImageBuilder::new(docker.clone());
    let cancel = tokio_util::sync::CancellationToken::new();
    let labels = std::collections::BTreeMap::from([(
        slipway_spec::labels::DAEMON.to_string(),
        daemon_id.clone(),
    )]);
    // A file no other build has, so that the cached layer is this test's alone.
    let marker = unique("layer");
    let first = builder
        .build(
            slipway_build::BuildSpec {
                tag: format!("{daemon_id}-first:1"),
                context: context(&[
                    ("Dockerfile", "FROM scratch\nCOPY marker /marker\n"),
                    ("marker", &marker),
                ]),
                dockerfile: "Dockerfile".into(),
                labels: labels.clone(),
                ..Default::default()
            },
            &cancel,
            |_| {},
        )
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn({
        let (docker, first, fetches) = (docker.clone(), first.id.clone(), fetches.clone());
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the daemon closed the connection mid-request");
                    request.extend_from_slice(&buf[..n]);
                }
                if fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    // The first image is the cached layer itself (its last step): removing
                    // it takes the layer away from the build that stands on it.
                    let options = bollard::query_parameters::RemoveImageOptionsBuilder::default()
                        .force(true)
                        .build();
                    docker
                        .remove_image(&first, Some(options), None)
                        .await
                        .unwrap();
                }
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nfetched\n",
                )
                .await
                .unwrap();
            }
        }
    });

    let mut lines = Vec::new();
    let second = builder
        .build(
            slipway_build::BuildSpec {
                tag: format!("{daemon_id}-second:1"),
                context: context(&[
                    (
                        "Dockerfile",
                        &format!(
                            "FROM scratch\nCOPY marker /marker\nADD http://127.0.0.1:{port}/f /f\n"
                        ),
                    ),
                    ("marker", &marker),
                ]),
                dockerfile: "Dockerfile".into(),
                labels,
                ..Default::default()
            },
            &cancel,
            |line| lines.push(line.to_string()),
        )
        .await;
    server.abort();
    let text = lines.join("\n");
    let second = second.unwrap_or_else(|e| panic!("the build was not run again: {e}\n{text}"));
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one fetch per run: {text}"
    );
    assert!(
        text.contains("Using cache"),
        "the first run took the layer from the cache: {text}"
    );
    assert!(
        text.contains("No such image") && text.contains("building again"),
        "the log says why the build ran again: {text}"
    );
    assert_eq!(
        builder.image_id(&second.tag).await.unwrap(),
        Some(second.id.clone())
    );
    assert_eq!(builder.image_id(&first.id).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_reach_the_build_log() {
    let Some(env) = common::env().await else {
        return;
    };
    let repo = HelloRepo::new("v1").unwrap();
    // The builder's own error message would quote the value of TOKEN.
    repo.write("Dockerfile", "FROM scratch\nARG TOKEN\nCOPY ${TOKEN} /x\n")
        .unwrap();
    repo.commit("use a secret").unwrap();
    let name = unique("secret");
    let spec: AppSpec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    {}\n    envs:\n      - {{key: TOKEN, value: supersecret-4242, scope: BUILD_TIME, type: SECRET}}\n",
        common::git(&repo)
    ))
    .unwrap()
    .spec;
    let (app, d) = env.engine.create_app(spec).await.unwrap();
    let d = env.engine.wait(&app.id, &d.id).await.unwrap();
    assert_eq!(d.phase, slipway_spec::Phase::Error);
    let (_, reason) = d.progress.first_error().unwrap();
    assert!(
        !reason.message.contains("supersecret-4242"),
        "{}",
        reason.message
    );
    assert!(reason.message.contains("[secret]"), "{}", reason.message);
    let log = env
        .engine
        .store()
        .read_log(&d.id, LogKind::Build, None, 0)
        .await
        .unwrap();
    let text: String = log.iter().map(|l| l.line.clone() + "\n").collect();
    assert!(!text.contains("supersecret-4242"), "{text}");
    assert!(text.contains("[secret]"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_open_only_in_the_container() {
    let Some(env) = common::env().await else {
        return;
    };
    let tag = format!("slipway-sealed:{}", env.daemon_id);
    slipway_testkit::build_hello_image(&env.docker, &tag, &env.daemon_id, "v1")
        .await
        .unwrap();
    let name = unique("sealed");
    let spec: AppSpec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    image: {{repository: slipway-sealed, tag: \"{}\"}}\n    envs:\n      - {{key: API_KEY, value: plain-secret-77, type: SECRET}}\n",
        env.daemon_id
    ))
    .unwrap()
    .spec;
    let (app, d) = env.engine.create_app(spec).await.unwrap();
    let sealed = app.spec.services[0].envs[0].value.clone().unwrap();
    assert!(
        sealed.starts_with("EV[1:"),
        "the app's spec holds it sealed: {sealed}"
    );
    assert_eq!(
        d.spec.services[0].envs[0].value.as_deref(),
        Some(sealed.as_str())
    );
    wait_ok(&env, &d).await;

    let web = &containers(&env, &app.id).await["web"][0];
    let inspect = env.docker.inspect_container(web, None).await.unwrap();
    let container_env = inspect.config.unwrap().env.unwrap();
    assert!(
        container_env.contains(&"API_KEY=plain-secret-77".to_string()),
        "{container_env:?}"
    );

    // Nowhere in the store in the clear; the key file is private.
    let db = std::fs::read(env.engine.config().data_dir.join("slipway.db")).unwrap();
    let wal =
        std::fs::read(env.engine.config().data_dir.join("slipway.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!String::from_utf8_lossy(&bytes).contains("plain-secret-77"));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.engine.config().data_dir.join("secret.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Sending the sealed value back keeps it; a restart opens it again.
    let mut same = env.engine.app(&app.id).await.unwrap().spec;
    same.services[0].instance_count = Some(2);
    let (updated, d) = env.engine.update_app(&app.id, same).await.unwrap();
    assert_eq!(
        updated.spec.services[0].envs[0].value.as_deref(),
        Some(sealed.as_str())
    );
    wait_ok(&env, &d).await;
    for id in &containers(&env, &app.id).await["web"] {
        let e = env
            .docker
            .inspect_container(id, None)
            .await
            .unwrap()
            .config
            .unwrap()
            .env
            .unwrap();
        assert!(e.contains(&"API_KEY=plain-secret-77".to_string()));
    }
}

/// Every image on the engine (`docker images -a`), as what `docker image inspect` and
/// `docker history --no-trunc` show of it.
async fn every_image(docker: &bollard::Docker) -> Vec<(String, String)> {
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default()
        .all(true)
        .build();
    let mut out = Vec::new();
    for image in docker.list_images(Some(options)).await.unwrap() {
        // Another test's image can go between the listing and the inspection.
        let Ok(inspect) = docker.inspect_image(&image.id).await else {
            continue;
        };
        let Ok(history) = docker.image_history(&image.id).await else {
            continue;
        };
        let text = format!(
            "{}\n{}",
            serde_json::to_string(&inspect).unwrap(),
            serde_json::to_string(&history).unwrap()
        );
        out.push((image.id, text));
    }
    out
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the engine's tracing says, for the test below to search.
fn captured_tracing() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static BUFFER: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            #[derive(Clone)]
            struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
            impl std::io::Write for Sink {
                fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                    self.0.lock().unwrap().extend_from_slice(buf);
                    Ok(buf.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            let sink = Sink(buffer.clone());
            // What the daemon's subscriber lets through at its most verbose.
            let filter = slipway_engine::QUIET_TARGETS
                .iter()
                .fold(tracing_subscriber::EnvFilter::new("debug"), |f, t| {
                    f.add_directive(format!("{t}=info").parse().unwrap())
                });
            // As the daemon's: `log` records (the Docker client's) are taken in too.
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .try_init()
                .unwrap();
            buffer
        })
        .clone()
}

/// An app with a SECRET build-time env: its value reaches the build (a `RUN` step checks it),
/// and neither it, its plain SHA-256, nor a plain digest of the build's inputs (the build key
/// as it was, which a short value can be found from by trying values) is in any image's labels,
/// configuration or history (the intermediate images of the build's steps included), the build
/// log, the deployment and the app as the API returns them, or the engine's tracing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_build_args_are_in_no_image_history_label_log_or_api_answer() {
    let tracing = captured_tracing();
    let Some(env) = common::env().await else {
        return;
    };
    let token = unique("tok");
    let repo = HelloRepo::new("v1").unwrap();
    repo.write(
        "Dockerfile",
        &format!(
            "FROM scratch\nENV STAMP_TEST={}\nCOPY hello /hello\nARG TOKEN\nRUN [\"/hello\", \"has-env\", \"TOKEN\"]\nRUN [\"/hello\", \"stamp\", \"/built-at\"]\nCOPY VERSION /VERSION\nCMD [\"/hello\"]\n",
            unique("secret-args")
        ),
    )
    .unwrap();
    let commit = repo.commit("a build argument").unwrap();
    let name = unique("secret-args");
    let spec: AppSpec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    {}\n    {}\n    envs:\n      - {{key: TOKEN, value: {token}, scope: BUILD_TIME, type: SECRET}}\n",
        common::git(&repo),
        common::HEALTH,
    ))
    .unwrap()
    .spec;
    let (app, d) = env.engine.create_app(spec).await.unwrap();
    let first = wait_ok(&env, &d).await;
    let d = env
        .engine
        .create_deployment(&app.id, true, false)
        .await
        .unwrap();
    let forced = wait_ok(&env, &d).await;
    assert!(!web(&forced).build_reused);
    let d = env
        .engine
        .create_deployment(&app.id, false, false)
        .await
        .unwrap();
    let reused = wait_ok(&env, &d).await;
    assert!(
        web(&reused).build_reused,
        "the rewritten image is found by its build key"
    );
    assert_eq!(web(&reused).image, web(&forced).image);

    let needles = [
        ("the value", token.clone()),
        ("its SHA-256", sha256_hex(&[token.as_bytes()])),
        (
            "an unkeyed digest of the build's inputs",
            sha256_hex(&[
                commit.as_bytes(),
                b"\0",
                b"",
                b"\0",
                b"Dockerfile",
                b"\0",
                format!("TOKEN={token}").as_bytes(),
                b"\0",
            ]),
        ),
    ];
    let mut haystacks: Vec<(String, String)> = Vec::new();
    let mut intermediate = 0;
    for d in [&first, &forced, &reused] {
        let log = env
            .engine
            .store()
            .read_log(&d.id, LogKind::Build, None, 0)
            .await
            .unwrap();
        let text: String = log.iter().map(|l| l.line.clone() + "\n").collect();
        // The layers the builder committed for each step.
        intermediate += text
            .lines()
            .filter(|l| l.trim().starts_with("---> ") && l.trim().len() == 17)
            .count();
        haystacks.push((format!("the build log of {}", d.id), text));
        let saved = env.engine.deployment(&app.id, &d.id).await.unwrap();
        haystacks.push((
            format!("deployment {} as the API returns it", d.id),
            serde_json::to_string(&saved).unwrap(),
        ));
    }
    assert!(
        intermediate >= 8,
        "the builds committed their steps' layers"
    );
    let record = env.engine.app(&app.id).await.unwrap();
    haystacks.push((
        "the app as the API returns it".into(),
        serde_json::to_string(&env.engine.app_view(&record).await.unwrap()).unwrap(),
    ));
    for (id, text) in every_image(&env.docker).await {
        haystacks.push((format!("image {id}"), text));
    }
    // Another test's tracing may be written into the buffer at the same time.
    let logged = String::from_utf8_lossy(&tracing.lock().unwrap()).into_owned();
    assert!(
        logged.contains(&app.id),
        "the engine's tracing was captured"
    );
    haystacks.push(("the engine's tracing".into(), logged));
    let built: Vec<&(String, String)> = haystacks
        .iter()
        .filter(|(_, text)| text.contains(&format!("slipway.image.app\":\"{}", app.id)))
        .collect();
    assert!(!built.is_empty(), "the app's image was inspected");
    for (what, text) in &haystacks {
        for (name, needle) in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{name} is in {what}: {text}"
            );
        }
    }
    // The RUN step that needed the value ran: its build log says so, redacted.
    let log = &haystacks[0].1;
    assert!(log.contains(r#""has-env", "TOKEN""#), "{log}");
    assert!(log.contains("written again"), "{log}");
}

/// Images beyond the retention go when any deployment ends (a failed one too), the active
/// deployment's never, and an app's deletion leaves none of its images, tagged or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_beyond_retention_and_of_deleted_apps_are_removed() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("retain");
    let _janitor = Janitor::new(&daemon_id);
    let data = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(data.path());
    config.daemon_id = daemon_id.clone();
    config.image_retention = 1;
    config.allow_local_sources = true;
    config.worker_min_ready = Duration::from_millis(300);
    let engine = Engine::start(config, docker.clone()).await.unwrap();
    let repo = HelloRepo::new("v1").unwrap();
    let name = unique("retained");
    // Layers of this test's own (no other build's cache can stand on them), so that every
    // layer its builds committed can be expected gone with the app.
    repo.write(
        "Dockerfile",
        &format!("FROM scratch\nENV STAMP_TEST={name}\nCOPY hello /hello\nCOPY VERSION /VERSION\nCMD [\"/hello\"]\n"),
    )
    .unwrap();
    repo.commit("layers of its own").unwrap();
    let spec_with = |fail: bool| {
        parse_spec(&format!(
            "name: {}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n    health_check: {{http_path: /healthz, period_seconds: 0.2, failure_threshold: 3}}\n    envs:\n      - {{key: HEALTHZ_FAIL, value: \"{}\", scope: RUN_TIME}}\n",
            name,
            repo.url(),
            if fail { "1" } else { "0" }
        ))
        .unwrap()
        .spec
    };
    let labelled = {
        let (docker, daemon_id) = (docker.clone(), daemon_id.clone());
        move |app: String| {
            let docker = docker.clone();
            let daemon_id = daemon_id.clone();
            async move {
                let filters = std::collections::HashMap::from([(
                    "label".to_string(),
                    vec![
                        format!("{}={app}", slipway_spec::labels::IMAGE_APP),
                        format!("{}={daemon_id}", slipway_spec::labels::IMAGE_DAEMON),
                    ],
                )]);
                let options = bollard::query_parameters::ListImagesOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build();
                let mut ids: Vec<String> = docker
                    .list_images(Some(options))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|i| i.id)
                    .collect();
                ids.sort();
                ids
            }
        }
    };
    // Old images are removed just after a deployment has ended: waits until the app's
    // labelled images are `want`, and returns what they are then.
    let settled = |app: String, want: Vec<String>| {
        let labelled = labelled.clone();
        async move {
            let mut now = Vec::new();
            for _ in 0..100 {
                now = labelled(app.clone()).await;
                if now == want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            now
        }
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<String>>()
    };
    let image_of = |d: &Deployment| web(d).image.clone().unwrap().id;
    let wait = |app: String, id: String| {
        let engine = engine.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(120), engine.wait(&app, &id))
                .await
                .unwrap()
                .unwrap()
        }
    };
    // The layers a deployment's build committed, from its build log.
    let layers = |id: String| {
        let engine = engine.clone();
        async move {
            engine
                .store()
                .read_log(&id, LogKind::Build, None, 0)
                .await
                .unwrap()
                .into_iter()
                .scan(false, |from_cache, l| {
                    let line = l.line.trim().to_string();
                    // A layer another build made, found in the cache, is not this build's.
                    let id = line
                        .strip_prefix("---> ")
                        .filter(|id| id.len() == 12 && !*from_cache)
                        .map(str::to_string);
                    *from_cache = line == "---> Using cache";
                    Some(id)
                })
                .flatten()
                .collect::<Vec<String>>()
        }
    };

    let (app, d) = engine.create_app(spec_with(false)).await.unwrap();
    let d1 = wait(app.id.clone(), d.id.clone()).await;
    assert_eq!(d1.phase, slipway_spec::Phase::Active);
    let mut built_layers = layers(d1.id.clone()).await;
    assert_eq!(labelled(app.id.clone()).await, vec![image_of(&d1)]);

    // Two new versions whose instances never become ready: each deployment fails, after its
    // image was built. The active deployment's image stays, and of the others only the newest.
    let mut failed = Vec::new();
    for v in ["v2", "v3"] {
        repo.commit_version(v).unwrap();
        let (_, d) = engine.update_app(&app.id, spec_with(true)).await.unwrap();
        let d = wait(app.id.clone(), d.id.clone()).await;
        assert_eq!(d.phase, slipway_spec::Phase::Error, "{v} is not ready");
        built_layers.extend(layers(d.id.clone()).await);
        failed.push(d);
    }
    let want = sorted(vec![&image_of(&d1), &image_of(&failed[1])]);
    assert_eq!(
        settled(app.id.clone(), want.clone()).await,
        want,
        "the active deployment's image and the newest one (retention 1)"
    );

    repo.commit_version("v4").unwrap();
    let (_, d) = engine.update_app(&app.id, spec_with(false)).await.unwrap();
    let d4 = wait(app.id.clone(), d.id.clone()).await;
    assert_eq!(d4.phase, slipway_spec::Phase::Active);
    built_layers.extend(layers(d4.id.clone()).await);
    assert_eq!(
        settled(app.id.clone(), vec![image_of(&d4)]).await,
        vec![image_of(&d4)]
    );

    engine.delete_app(&app.id, true).await.unwrap();
    assert_eq!(labelled(app.id.clone()).await, Vec::<String>::new());
    // The intermediate images of its builds (untagged, without labels) went with them.
    assert!(built_layers.len() >= 8, "{built_layers:?}");
    for layer in &built_layers {
        assert!(
            docker.inspect_image(layer).await.is_err(),
            "layer {layer} of a deleted app's build is still there"
        );
    }
    engine.shutdown().await;
}
