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
