//! Fixtures shared by Slipway's demo and tests:
//! - [`hello_binary`] builds `examples/hello` as a static binary (no image registry is needed:
//!   its image is `FROM scratch`);
//! - [`HelloRepo`] makes a real git repository of the example app in a temp dir, and commits
//!   new versions of it;
//! - [`Janitor`] removes every Docker object that carries a daemon ID when it is dropped, so a
//!   test cleans up even when an assertion fails;
//! - [`docker`] connects to the engine, or explains why a test is skipped (outside CI only);
//! - [`Traffic`] keeps clients sending requests while a test restarts or rebuilds an app;
//! - [`LocalSwarm`] and [`Registry`]: a single-node swarm and a loopback registry.

mod authority;
mod pebble;
mod swarm;
mod traffic;

pub use authority::Authority;
pub use pebble::{Pebble, PebbleError};
pub use swarm::{LocalSwarm, Registry};
pub use traffic::{Tally, Traffic};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("building the hello example failed: {0}")]
    Build(String),
    #[error("git failed while {action}")]
    Git {
        action: &'static str,
        #[source]
        source: git2::Error,
    },
    #[error("writing {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the testkit lives in crates/")
        .to_path_buf()
}

/// A name no other test run uses: `prefix` and 8 random hex digits.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..8])
}

/// Whether this runs in CI (`CI=true`), where a test may not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Connects to the Docker engine. Outside CI, when no engine is reachable, prints why and
/// returns `None` so that the test can skip; in CI (`CI=true`) that is a failure.
pub async fn docker() -> Option<Docker> {
    let result = async {
        let docker = Docker::connect_with_local_defaults()?;
        let docker = docker.negotiate_version().await?;
        docker.ping().await?;
        Ok::<_, bollard::errors::Error>(docker)
    }
    .await;
    match result {
        Ok(d) => Some(d),
        Err(e) if in_ci() => {
            panic!("Docker is unreachable in CI: {e}")
        }
        Err(e) => {
            eprintln!("skipping: this test needs a Docker engine and none is reachable ({e})");
            None
        }
    }
}

/// Builds `examples/hello` as a statically linked binary (once per process) and returns its
/// path. Uses its own target directory so that it never waits on the workspace's build lock.
pub fn hello_binary() -> Result<PathBuf, FixtureError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let manifest = root.join("examples/hello/Cargo.toml");
            let target_dir = root.join("target/hello");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let output = Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                ])
                .arg("--manifest-path")
                .arg(&manifest)
                .arg("--target-dir")
                .arg(&target_dir)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !output.status.success() {
                return Err(String::from_utf8_lossy(&output.stderr).into_owned());
            }
            Ok(target_dir.join("x86_64-unknown-linux-gnu/release/hello"))
        })
        .clone()
        .map_err(FixtureError::Build)
}

/// A Dockerfile line that makes the hello image check its own health (`GET /healthz` on
/// `PORT`, every 100 ms) with the program it brings: a `FROM scratch` image has no shell.
pub const HELLO_HEALTHCHECK: &str =
    "HEALTHCHECK --interval=100ms --timeout=1s CMD [\"/hello\", \"check\"]\n";

/// A git repository of the hello example in a temp dir.
#[derive(Debug)]
pub struct HelloRepo {
    dir: tempfile::TempDir,
}

impl HelloRepo {
    /// Makes the repository with one commit: the Dockerfile, the binary and `VERSION`.
    pub fn new(version: &str) -> Result<HelloRepo, FixtureError> {
        let binary = hello_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("slipway-hello-")
            .tempdir()
            .map_err(|source| FixtureError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let repo = HelloRepo { dir };
        let example = workspace_root().join("examples/hello");
        repo.copy(&example.join("Dockerfile"), "Dockerfile")?;
        repo.copy(&binary, "hello")?;
        repo.write("VERSION", &format!("{version}\n"))?;
        git2::Repository::init_opts(
            repo.path(),
            git2::RepositoryInitOptions::new().initial_head("main"),
        )
        .map_err(|source| FixtureError::Git {
            action: "creating the repository",
            source,
        })?;
        repo.commit(&format!("hello {version}"))?;
        Ok(repo)
    }

    /// [`HelloRepo::new`] with [`HELLO_HEALTHCHECK`] in its Dockerfile, committed: an image
    /// that checks its own health, as Swarm needs (it runs checks inside the container).
    pub fn with_healthcheck(version: &str) -> Result<HelloRepo, FixtureError> {
        let repo = HelloRepo::new(version)?;
        let path = repo.path().join("Dockerfile");
        let dockerfile = std::fs::read_to_string(&path).map_err(|source| FixtureError::Io {
            path: path.clone(),
            source,
        })?;
        repo.write("Dockerfile", &format!("{dockerfile}{HELLO_HEALTHCHECK}"))?;
        repo.commit("a container health check")?;
        Ok(repo)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The URL Slipway clones from (a local path: the daemon or engine must allow local
    /// sources, `--allow-local-sources` or `EngineConfig::allow_local_sources`).
    pub fn url(&self) -> String {
        self.path().display().to_string()
    }

    fn copy(&self, from: &Path, to: &str) -> Result<(), FixtureError> {
        let dest = self.path().join(to);
        std::fs::copy(from, &dest).map_err(|source| FixtureError::Io { path: dest, source })?;
        Ok(())
    }

    /// Writes a file (creating its directories) without committing it.
    pub fn write(&self, path: &str, content: &str) -> Result<(), FixtureError> {
        let dest = self.path().join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| FixtureError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&dest, content).map_err(|source| FixtureError::Io { path: dest, source })
    }

    /// Commits every file in the work tree on `main`; returns the commit hash.
    pub fn commit(&self, message: &str) -> Result<String, FixtureError> {
        let git = |action| move |source| FixtureError::Git { action, source };
        let repo = git2::Repository::open(self.path()).map_err(git("opening the repository"))?;
        let mut index = repo.index().map_err(git("reading the index"))?;
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .map_err(git("adding files"))?;
        index.write().map_err(git("writing the index"))?;
        let tree_id = index.write_tree().map_err(git("writing the tree"))?;
        let tree = repo.find_tree(tree_id).map_err(git("reading the tree"))?;
        let sig = git2::Signature::now("Slipway Tests", "tests@slipway.invalid")
            .map_err(git("making a signature"))?;
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let id = repo
            .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .map_err(git("committing"))?;
        Ok(id.to_string())
    }

    /// Writes `VERSION` and commits it.
    pub fn commit_version(&self, version: &str) -> Result<String, FixtureError> {
        self.write("VERSION", &format!("{version}\n"))?;
        self.commit(&format!("hello {version}"))
    }
}

/// Builds the hello image directly (not through Slipway), for `image:` components and
/// databases in tests. The image carries `slipway.daemon=<daemon_id>` so a [`Janitor`] removes
/// it.
pub async fn build_hello_image(
    docker: &Docker,
    tag: &str,
    daemon_id: &str,
    version: &str,
) -> Result<String, FixtureError> {
    build_hello_image_with(docker, tag, daemon_id, version, "").await
}

/// [`build_hello_image`] with `extra` appended to the Dockerfile (e.g. a `HEALTHCHECK`).
pub async fn build_hello_image_with(
    docker: &Docker,
    tag: &str,
    daemon_id: &str,
    version: &str,
    extra: &str,
) -> Result<String, FixtureError> {
    let binary = hello_binary()?;
    let mut dockerfile = std::fs::read(workspace_root().join("examples/hello/Dockerfile"))
        .map_err(|source| FixtureError::Io {
            path: "examples/hello/Dockerfile".into(),
            source,
        })?;
    dockerfile.extend_from_slice(extra.as_bytes());
    let bin = std::fs::read(&binary).map_err(|source| FixtureError::Io {
        path: binary.clone(),
        source,
    })?;
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("Dockerfile", dockerfile, 0o644),
        ("hello", bin, 0o755),
        ("VERSION", format!("{version}\n").into_bytes(), 0o644),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        tar.append_data(&mut h, name, data.as_slice())
            .map_err(|source| FixtureError::Io {
                path: name.into(),
                source,
            })?;
    }
    let body = tar.into_inner().map_err(|source| FixtureError::Io {
        path: "context".into(),
        source,
    })?;
    let labels = HashMap::from([(
        slipway_spec::labels::DAEMON.to_string(),
        daemon_id.to_string(),
    )]);
    let options = bollard::query_parameters::BuildImageOptionsBuilder::default()
        .t(tag)
        .rm(true)
        .labels(&labels)
        .build();
    use futures::StreamExt;
    // Tests build and delete images at once on one engine: a cached layer this build takes
    // can be removed under it by another test's clean-up, which Docker reports by the layer's
    // ID. Then the build runs again (as the engine's builder does), a few times at most.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut stream = docker.build_image(
            options.clone(),
            None,
            Some(bollard::body_full(body.clone().into())),
        );
        let mut failed = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        failed = Some(detail);
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        match failed {
            None => break,
            Some(message) if attempts < 3 && cached_layer_vanished(&message) => continue,
            Some(message) => return Err(FixtureError::Build(message)),
        }
    }
    let inspect = docker
        .inspect_image(tag)
        .await
        .map_err(|e| FixtureError::Build(e.to_string()))?;
    Ok(inspect.id.unwrap_or_default())
}

/// Whether a build failed because a layer it took from the cache was removed while it ran.
fn cached_layer_vanished(message: &str) -> bool {
    message.contains("No such image: sha256:") || message.contains("unknown parent image ID")
}

/// Removes, when dropped, every container, network, volume and image labelled
/// `slipway.daemon=<daemon_id>`, and the images labelled `slipway.image.daemon=<daemon_id>`
/// with the containers made from them: clean-up that runs even when a test panics.
#[derive(Debug)]
pub struct Janitor {
    pub daemon_id: String,
}

impl Janitor {
    pub fn new(daemon_id: &str) -> Janitor {
        Janitor {
            daemon_id: daemon_id.to_string(),
        }
    }

    /// Removes everything now; returns how many objects were removed.
    pub async fn sweep(docker: &Docker, daemon_id: &str) -> usize {
        let label =
            |key: &str| HashMap::from([("label".to_string(), vec![format!("{key}={daemon_id}")])]);
        let (own, of_images) = (
            label(slipway_spec::labels::DAEMON),
            label(slipway_spec::labels::IMAGE_DAEMON),
        );
        let mut removed = 0;
        // The containers Slipway made, and those made by hand from its images.
        for filters in [&own, &of_images] {
            let Ok(list) = docker
                .list_containers(Some(
                    ListContainersOptionsBuilder::default()
                        .all(true)
                        .filters(filters)
                        .build(),
                ))
                .await
            else {
                continue;
            };
            for c in list {
                let options = RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build();
                if docker
                    .remove_container(c.id.as_deref().unwrap_or_default(), Some(options))
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        if let Ok(list) = docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default().filters(&own).build(),
            ))
            .await
        {
            for n in list {
                if docker
                    .remove_network(n.id.as_deref().unwrap_or_default())
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        if let Ok(list) = docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default().filters(&own).build(),
            ))
            .await
        {
            for v in list.volumes.unwrap_or_default() {
                if docker
                    .remove_volume(
                        &v.name,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        // The images Slipway built, and those the tests built themselves.
        for filters in [&of_images, &own] {
            let Ok(list) = docker
                .list_images(Some(
                    ListImagesOptionsBuilder::default().filters(filters).build(),
                ))
                .await
            else {
                continue;
            };
            for i in list {
                let options = RemoveImageOptionsBuilder::default().force(true).build();
                if docker
                    .remove_image(&i.id, Some(options), None)
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        let daemon_id = self.daemon_id.clone();
        // A thread of its own, so that this works inside and outside a tokio runtime.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for clean-up");
            rt.block_on(async {
                if let Ok(docker) = Docker::connect_with_local_defaults()
                    && let Ok(docker) = docker.negotiate_version().await
                {
                    // An engine's task still running when its test ends (one that panicked)
                    // can create an object just after a sweep: sweep until one finds nothing.
                    for _ in 0..4 {
                        if Janitor::sweep(&docker, &daemon_id).await == 0 {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    }
                }
            });
        });
        let _ = handle.join();
    }
}
