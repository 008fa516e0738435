//! Slipway's image builder: builds a build context into an image with Docker's classic
//! builder API (no BuildKit session needed, so it works with any engine from API 1.41 on).
//!
//! Promises:
//! - Every build line is handed to the caller as it arrives (the deployment's BUILD log),
//!   with the values of SECRET envs replaced by `[secret]`.
//! - A build either returns the ID of the image it tagged, or an error that says why in the
//!   builder's own words (a Dockerfile syntax error, a failing `RUN`, ...).
//! - A build stops at its timeout or when its cancellation token fires; dropping the request
//!   makes Docker abandon the build.
//! - A build that fails or is abandoned (canceled, timed out) removes the layers it committed,
//!   the one Docker still commits after being abandoned mid-step included (it is waited for,
//!   up to 15 s; not for a first step on `scratch`, whose layer cannot be told from another
//!   build's); never its base image nor a layer it took from the cache.
//! - `no_cache` builds with no layer cache at all; otherwise Docker's layer cache is used.
//! - A build that fails because a layer it took from the cache was removed under it (by
//!   another build's clean-up on the same engine) is run once more, and the log says so.
//!
//! - A build whose build arguments include SECRET values uses no layer cache and leaves none:
//!   the classic builder writes the build arguments a `RUN` step sees into the image's history
//!   (`docker history --no-trunc`) and into the intermediate images of each step, so the image
//!   is written again without them (see [`scrub`]'s note) and the original image and its
//!   intermediate images are removed. Its history, its configuration's record of the build,
//!   its labels and the build log then name no SECRET value.
//!
//! Images carry the labels the caller gives (Slipway's `slipway.*` labels), so that they can be
//! found and removed with the app.

mod scrub;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, ImportImageOptionsBuilder,
    ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures::StreamExt;
use slipway_spec::{FailureCode, docker_unreachable};
use tokio_util::sync::CancellationToken;

/// What went wrong building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The builder refused the Dockerfile or a step failed; `message` is the builder's.
    #[error("building {tag} failed: {message}")]
    Failed { tag: String, message: String },
    #[error("building {tag} took longer than {seconds} s and was stopped")]
    Timeout { tag: String, seconds: u64 },
    #[error("building {tag} was canceled")]
    Canceled { tag: String },
    /// The engine does not have the image and could not pull it.
    #[error("image {image} is not on this Docker engine and could not be pulled: {message}")]
    Missing { image: String, message: String },
    /// The image of a build with SECRET build arguments could not be written again without
    /// them; it was removed.
    #[error("writing {tag} again without its SECRET build arguments failed: {message}")]
    Scrub { tag: String, message: String },
    #[error("Docker could not {action} {image}")]
    Docker {
        action: &'static str,
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl BuildError {
    /// The stable code a deployment that fails with this error ends with.
    pub fn code(&self) -> FailureCode {
        match self {
            BuildError::Failed { .. } | BuildError::Scrub { .. } => FailureCode::BuildFailed,
            BuildError::Timeout { .. } => FailureCode::Timeout,
            BuildError::Canceled { .. } => FailureCode::Canceled,
            BuildError::Missing { .. } => FailureCode::ImageMissing,
            BuildError::Docker { source, .. } if docker_unreachable(source) => {
                FailureCode::RuntimeUnreachable
            }
            BuildError::Docker { .. } => FailureCode::RuntimeFailed,
        }
    }
}

/// Whether the builder failed because a layer it had taken from the cache is no longer
/// there. Docker names the layer by its ID ("No such image: sha256:...", or "unknown parent
/// image ID sha256:..." when it goes before a step's result is committed on it), or, when it
/// goes while being read, says the layer's file is missing. A missing base image is named by its
/// reference instead, and is not such a failure.
fn cached_layer_vanished(message: &str) -> bool {
    message.contains("No such image: sha256:")
        || message.contains("unknown parent image ID sha256:")
        || (message.contains("failed to get digest sha256:")
            && message.contains("no such file or directory"))
}

/// How long an abandoned build's last step is waited for, to remove the layer it commits.
const ORPHAN_WAIT: Duration = Duration::from_secs(15);
/// How long a failed build's layer is tried again while the container of the step Docker
/// abandoned still uses it.
const LAYER_IN_USE_WAIT: Duration = Duration::from_secs(10);

/// What the classic builder's output says about the layers of one build.
#[derive(Debug, Default)]
struct Layers {
    /// The layers this build committed itself (not its base image, not a cached layer), which
    /// are its to remove if it fails.
    made: Vec<String>,
    /// The short ID of the image the next step builds on ("" for `scratch`, or before `FROM`).
    tip: String,
    /// The instruction of the step under way: from its `Step N/M : INSTRUCTION` line until the
    /// line that names its result.
    open: Option<String>,
    from_cache: bool,
}

impl Layers {
    fn read(&mut self, line: &str) {
        let line = line.trim();
        if let Some((_, instruction)) = line
            .strip_prefix("Step ")
            .and_then(|rest| rest.split_once(" : "))
        {
            let keyword = instruction.split_whitespace().next().unwrap_or_default();
            self.open = Some(keyword.to_ascii_uppercase());
            self.from_cache = false;
            return;
        }
        if line == "---> Using cache" {
            self.from_cache = true;
            return;
        }
        let Some(id) = line.strip_prefix("--->").map(str::trim) else {
            return;
        };
        if !(id.is_empty() || id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())) {
            return; // "---> Running in ..."
        }
        let step = self.open.take();
        if !id.is_empty() && !self.from_cache && step.as_deref() != Some("FROM") {
            self.made.push(id.to_string());
        }
        self.tip = id.to_string();
        self.from_cache = false;
    }

    /// The instruction of a step under way that Docker still commits when the build is
    /// abandoned: any but `FROM` (nothing to commit) and `RUN` (its container is killed).
    fn committing(&self) -> Option<&str> {
        self.open
            .as_deref()
            .filter(|step| !matches!(*step, "FROM" | "RUN"))
    }
}

/// One build to run.
#[derive(Debug, Clone, Default)]
pub struct BuildSpec {
    /// The tag the image gets (`repository:tag`).
    pub tag: String,
    /// The build context, a tar archive.
    pub context: Vec<u8>,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Build with no layer cache.
    pub no_cache: bool,
    /// Values that must never appear in the log (SECRET envs).
    pub secrets: Vec<String>,
}

impl BuildSpec {
    /// `line` with every SECRET value replaced by `[secret]`.
    pub fn redact(&self, line: &str) -> String {
        self.secrets
            .iter()
            .filter(|s| !s.is_empty())
            .fold(line.to_string(), |l, s| {
                l.replace(s.as_str(), scrub::PLACEHOLDER)
            })
    }
}

/// An image a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Docker's image ID, `sha256:...`.
    pub id: String,
    pub tag: String,
}

/// Builds images on one Docker engine.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    docker: Docker,
    timeout: Duration,
    /// Where images with SECRET build arguments are written again (the system's temporary
    /// directory unless [`ImageBuilder::with_scratch_dir`] says otherwise).
    scratch_dir: Option<PathBuf>,
}

impl ImageBuilder {
    /// Builds time out after thirty minutes unless [`ImageBuilder::with_timeout`] says otherwise.
    pub fn new(docker: Docker) -> Self {
        ImageBuilder {
            docker,
            timeout: Duration::from_secs(1800),
            scratch_dir: None,
        }
    }

    /// Where an image with SECRET build arguments is exported and written again: a private
    /// directory of this one is made for each such build and removed after it. The export
    /// holds the image's layers, so the directory needs room for about twice the image.
    pub fn with_scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_dir = Some(dir.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs one build, handing every line of its output to `log` as it arrives.
    ///
    /// A layer the build took from Docker's cache can be removed while the build stands on
    /// it: the classic builder holds no reference to it between two steps, and another
    /// build's clean-up (of the layers a failed build made, or of an app's old images) may
    /// remove it then. Docker then fails the build with "No such image". Such a build is run
    /// once more, within the same timeout: the layer is gone, so the second run makes its own.
    ///
    /// A build whose build arguments include SECRET values is built without the layer cache,
    /// and its image is then written again without them (see the crate's note).
    #[tracing::instrument(skip_all, fields(tag = %spec.tag, no_cache = spec.no_cache))]
    pub async fn build(
        &self,
        mut spec: BuildSpec,
        cancel: &CancellationToken,
        mut log: impl FnMut(&str) + Send,
    ) -> Result<BuiltImage, BuildError> {
        let secret_args: Vec<String> = spec
            .build_args
            .iter()
            .filter(|(_, v)| !v.is_empty() && spec.secrets.contains(v))
            .map(|(k, _)| k.clone())
            .collect();
        if !secret_args.is_empty() {
            log(&format!(
                "SECRET build-time envs ({}): built without the layer cache, and the image is written again without their values",
                secret_args.join(", ")
            ));
            spec.no_cache = true;
        }
        let built = self
            .build_once_more_if_needed(&mut spec, cancel, &mut log)
            .await?;
        if secret_args.is_empty() {
            return Ok(built);
        }
        match self.scrub(&built, &spec, &mut log).await {
            Ok(built) => Ok(built),
            Err(message) => {
                // The image still names the values: it does not stay.
                for reference in [built.tag.as_str(), built.id.as_str()] {
                    let options = RemoveImageOptionsBuilder::default().force(true).build();
                    if let Err(e) = self
                        .docker
                        .remove_image(reference, Some(options), None)
                        .await
                    {
                        tracing::debug!(image = %reference, error = %e, "removing an image that could not be written again failed");
                    }
                }
                let message = spec.redact(&message);
                log(&message);
                Err(BuildError::Scrub {
                    tag: built.tag,
                    message,
                })
            }
        }
    }

    async fn build_once_more_if_needed(
        &self,
        spec: &mut BuildSpec,
        cancel: &CancellationToken,
        mut log: &mut (impl FnMut(&str) + Send),
    ) -> Result<BuiltImage, BuildError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let context = bytes::Bytes::from(std::mem::take(&mut spec.context));
        match self
            .attempt(spec, context.clone(), deadline, cancel, &mut log)
            .await
        {
            Err(BuildError::Failed { message, .. }) if cached_layer_vanished(&message) => {
                tracing::warn!(%message, "a cached layer was removed during the build; building again");
                log(
                    "A layer this build took from the cache was removed while it ran \
                     (most likely by another build's clean-up); building again",
                );
                self.attempt(spec, context, deadline, cancel, &mut log)
                    .await
            }
            result => result,
        }
    }

    async fn attempt(
        &self,
        spec: &BuildSpec,
        context: bytes::Bytes,
        deadline: tokio::time::Instant,
        cancel: &CancellationToken,
        log: &mut (impl FnMut(&str) + Send),
    ) -> Result<BuiltImage, BuildError> {
        let tag = spec.tag.clone();
        let args: HashMap<String, String> = spec.build_args.clone().into_iter().collect();
        let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&spec.dockerfile)
            .t(&spec.tag)
            .rm(true)
            .forcerm(true)
            .nocache(spec.no_cache)
            .buildargs(&args)
            .labels(&labels)
            .build();
        let redact = |line: &str| spec.redact(line);
        let body = bollard::body_full(context);
        let mut stream = self.docker.build_image(options, None, Some(body));
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        let mut reported_id: Option<String> = None;
        let mut layers = Layers::default();
        let started = std::time::SystemTime::now();
        let result = loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = &mut deadline => {
                    break Err(BuildError::Timeout { tag: tag.clone(), seconds: self.timeout.as_secs() });
                }
                () = cancel.cancelled() => break Err(BuildError::Canceled { tag: tag.clone() }),
            };
            let Some(item) = item else { break Ok(()) };
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                        for line in text.lines().filter(|l| !l.trim().is_empty()) {
                            layers.read(line);
                            log(&redact(line));
                        }
                    }
                    if let Some(id) = info.aux.and_then(|a| a.id) {
                        reported_id = Some(id);
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    let message = redact(error.trim());
                    log(&message);
                    break Err(BuildError::Failed {
                        tag: tag.clone(),
                        message,
                    });
                }
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    let message = redact(message.trim());
                    log(&message);
                    break Err(BuildError::Failed {
                        tag: tag.clone(),
                        message,
                    });
                }
                Err(source) => {
                    break Err(BuildError::Docker {
                        action: "build",
                        image: tag.clone(),
                        source,
                    });
                }
            }
        };
        if let Err(e) = result {
            // Dropping the stream makes Docker abandon a build still under way.
            drop(stream);
            let abandoned = !matches!(e, BuildError::Failed { .. });
            // On `scratch` (no layer under the step yet) the layer could not be told from one
            // another build of the same files commits at the same moment, which that build
            // needs: it is left alone.
            if abandoned
                && !layers.tip.is_empty()
                && let Some(step) = layers.committing()
            {
                // Docker abandons the build between steps: a step other than `RUN` (whose
                // container is killed) is still committed, after this build stopped listening.
                // Its layer is found by its parent and removed.
                log(&format!(
                    "waiting for the {step} step under way to end, to remove its layer"
                ));
                self.remove_orphan(&layers.tip, started).await;
            }
            // A layer can still be the image of the container Docker made for the step it
            // abandoned, until it removes that container: its removal is tried again meanwhile.
            let deadline = tokio::time::Instant::now() + LAYER_IN_USE_WAIT;
            for layer in layers.made.iter().rev() {
                self.remove_layer(layer, deadline).await;
            }
            return Err(e);
        }
        let id = match self.image_id(&tag).await? {
            Some(id) => id,
            None => reported_id.ok_or_else(|| BuildError::Failed {
                tag: tag.clone(),
                message: "the builder finished without producing an image".into(),
            })?,
        };
        Ok(BuiltImage { id, tag })
    }

    /// Removes a layer of a failed build (and its untagged parents), trying again until
    /// `deadline` while a container still uses it.
    async fn remove_layer(&self, layer: &str, deadline: tokio::time::Instant) {
        loop {
            let options = RemoveImageOptionsBuilder::default().noprune(false).build();
            match self.docker.remove_image(layer, Some(options), None).await {
                Ok(_) => return,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return,
                // Only while a container uses it: a layer another build has taken from the
                // cache (its children) is that build's, and removing it the moment it has none
                // would pull it from under that build's next commit.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409,
                    message,
                }) if message.contains("being used by")
                    && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(%layer, %message, "a failed build's layer is still in use; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => {
                    tracing::debug!(%layer, error = %err, "removing a failed build's layer failed");
                    return;
                }
            }
        }
    }

    /// Waits (up to [`ORPHAN_WAIT`]) for the layer an abandoned build commits after it was
    /// abandoned: an untagged image without children, on `parent` (the last layer the builder
    /// named, "" for `scratch`), made since `started`, and removes it.
    async fn remove_orphan(&self, parent: &str, started: std::time::SystemTime) {
        let since = started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64 - 1);
        let deadline = tokio::time::Instant::now() + ORPHAN_WAIT;
        let filters = HashMap::from([("dangling".to_string(), vec!["true".to_string()])]);
        loop {
            let options = ListImagesOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            match self.docker.list_images(Some(options)).await {
                Ok(images) => {
                    let orphan = images.into_iter().find(|image| {
                        image.created >= since
                            && image
                                .parent_id
                                .strip_prefix("sha256:")
                                .unwrap_or(&image.parent_id)
                                .starts_with(parent)
                            && (parent.is_empty() == image.parent_id.is_empty())
                    });
                    if let Some(orphan) = orphan {
                        self.remove_layer(&orphan.id, deadline).await;
                        return;
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "listing images for an abandoned build's layer failed");
                    return;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(parent, "an abandoned build committed no layer in time");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes the image `built` again without the SECRET values of `spec` in its history and
    /// build record (`docker save`, then `docker load` of the rewritten archive under the same
    /// tag), and removes the original image with its intermediate images. Returns the new
    /// image; on failure, why (the original image is then still there, tagged or not).
    async fn scrub(
        &self,
        built: &BuiltImage,
        spec: &BuildSpec,
        log: &mut (impl FnMut(&str) + Send),
    ) -> Result<BuiltImage, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let scratch = match &self.scratch_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                tempfile::Builder::new().prefix("scrub-").tempdir_in(dir)
            }
            None => tempfile::Builder::new().prefix("slipway-scrub-").tempdir(),
        }
        .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
        let saved_path = scratch.path().join("saved.tar");
        let load_path = scratch.path().join("load.tar");
        let mut saved = tokio::fs::File::create(&saved_path)
            .await
            .map_err(|e| format!("cannot create {}: {e}", saved_path.display()))?;
        let mut export = self.docker.export_image(&built.id);
        while let Some(chunk) = export.next().await {
            let chunk = chunk.map_err(|e| format!("Docker could not export {}: {e}", built.id))?;
            saved
                .write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", saved_path.display()))?;
        }
        saved
            .flush()
            .await
            .map_err(|e| format!("cannot write {}: {e}", saved_path.display()))?;
        drop(saved);
        let values: Vec<String> = spec
            .secrets
            .iter()
            .filter(|v| !v.is_empty())
            .cloned()
            .collect();
        let rewritten = {
            let (saved_path, load_path, tag, values) = (
                saved_path.clone(),
                load_path.clone(),
                built.tag.clone(),
                values.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let input = std::io::BufReader::new(std::fs::File::open(&saved_path)?);
                let output = std::io::BufWriter::new(std::fs::File::create(&load_path)?);
                scrub::rewrite(input, output, &tag, &values)
            })
            .await
            .map_err(|e| format!("rewriting the saved image failed: {e}"))?
            .map_err(|e| format!("rewriting the saved image failed: {e}"))?
        };
        let _ = std::fs::remove_file(&saved_path);
        if !rewritten.still_in_config.is_empty() {
            let keys: Vec<&str> = spec
                .build_args
                .iter()
                .filter(|(_, v)| {
                    rewritten
                        .still_in_config
                        .iter()
                        .any(|&i| values.get(i) == Some(v))
                })
                .map(|(k, _)| k.as_str())
                .collect();
            let line = format!(
                "warning: the Dockerfile puts the value of SECRET build-time env {} into the image's configuration (an ENV, LABEL, WORKDIR, USER... made of it), where whoever can inspect the image reads it",
                if keys.is_empty() {
                    "(a run-time one)".to_string()
                } else {
                    keys.join(", ")
                }
            );
            tracing::warn!(tag = %built.tag, "{line}");
            log(&line);
        }
        if !rewritten.changed {
            return Ok(built.clone());
        }
        let file = tokio::fs::File::open(&load_path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", load_path.display()))?;
        let body = futures::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut load = self.docker.import_image_stream(options, body, None);
        while let Some(item) = load.next().await {
            match item {
                Ok(info) => {
                    if let Some(error) = info.error_detail.and_then(|e| e.message) {
                        return Err(format!(
                            "Docker could not load the rewritten image: {error}"
                        ));
                    }
                }
                Err(e) => return Err(format!("Docker could not load the rewritten image: {e}")),
            }
        }
        drop(scratch);
        let id = self
            .image_id(&built.tag)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "{} is missing after the rewritten image was loaded",
                    built.tag
                )
            })?;
        if id == built.id {
            return Err("the loaded image is the original one".into());
        }
        // The original, untagged now, and with it the intermediate images of its steps (its
        // parents that nothing else stands on).
        let options = RemoveImageOptionsBuilder::default().noprune(false).build();
        match self
            .docker
            .remove_image(&built.id, Some(options), None)
            .await
        {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                return Err(format!(
                    "Docker could not remove the original image {}: {e}",
                    built.id
                ));
            }
        }
        log(
            "the image was written again without the values of SECRET build-time envs in its history; the original and its intermediate images were removed",
        );
        tracing::info!(tag = %built.tag, original = %built.id, image = %id, "wrote the image again without its SECRET build arguments");
        Ok(BuiltImage {
            id,
            tag: built.tag.clone(),
        })
    }

    /// The ID of a local image, or `None` when Docker has no image by that reference.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, BuildError> {
        match self.docker.inspect_image(reference).await {
            Ok(inspect) => Ok(inspect.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(source) => Err(BuildError::Docker {
                action: "inspect",
                image: reference.to_string(),
                source,
            }),
        }
    }

    /// The ID of an image, pulling it from its registry when the engine does not have it.
    pub async fn resolve(&self, reference: &str) -> Result<String, BuildError> {
        if let Some(id) = self.image_id(reference).await? {
            return Ok(id);
        }
        let options = CreateImageOptionsBuilder::default()
            .from_image(reference)
            .build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(item) = pull.next().await {
            if let Err(e) = item {
                let message = match e {
                    bollard::errors::Error::DockerStreamError { error } => error,
                    bollard::errors::Error::DockerResponseServerError { message, .. } => message,
                    other => other.to_string(),
                };
                return Err(BuildError::Missing {
                    image: reference.to_string(),
                    message,
                });
            }
        }
        self.image_id(reference)
            .await?
            .ok_or_else(|| BuildError::Missing {
                image: reference.to_string(),
                message: "the pull finished without the image".into(),
            })
    }

    /// The IDs of the images that carry all of `labels`, with their labels.
    pub async fn list_labelled(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<(String, HashMap<String, String>)>, BuildError> {
        let filters = HashMap::from([(
            "label".to_string(),
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )]);
        let options = ListImagesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let images = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|source| BuildError::Docker {
                action: "list",
                image: "images".into(),
                source,
            })?;
        Ok(images.into_iter().map(|i| (i.id, i.labels)).collect())
    }

    /// Removes every image that carries all of `labels` and that no container uses. Returns
    /// how many were removed.
    pub async fn remove_labelled(&self, labels: &[(&str, &str)]) -> Result<usize, BuildError> {
        let filters = HashMap::from([(
            "label".to_string(),
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )]);
        let options = ListImagesOptionsBuilder::default()
            .all(false)
            .filters(&filters)
            .build();
        let images = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|source| BuildError::Docker {
                action: "list",
                image: "images".into(),
                source,
            })?;
        let mut removed = 0;
        for image in images {
            let options = RemoveImageOptionsBuilder::default().force(true).build();
            match self
                .docker
                .remove_image(&image.id, Some(options), None)
                .await
            {
                Ok(_) => removed += 1,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => {}
                Err(source) => {
                    return Err(BuildError::Docker {
                        action: "remove",
                        image: image.id,
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }

    /// Removes an image; an image still used by a container or already gone is left alone
    /// and reported as `false`.
    pub async fn remove_image(&self, reference: &str) -> Result<bool, BuildError> {
        let options = RemoveImageOptionsBuilder::default().noprune(false).build();
        match self
            .docker
            .remove_image(reference, Some(options), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(false),
            Err(source) => Err(BuildError::Docker {
                action: "remove",
                image: reference.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cached_layer_vanished;
    use super::{BuildError, ImageBuilder, Layers};
    use slipway_spec::FailureCode;

    #[tokio::test]
    async fn a_build_on_docker_that_cannot_be_reached_says_so_not_that_the_build_failed() {
        let dir = tempfile::tempdir().unwrap();
        // A socket file that nothing listens on any more: the connection is refused.
        let socket = dir.path().join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let docker = bollard::Docker::connect_with_unix(
            socket.to_str().unwrap(),
            5,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        let err = ImageBuilder::new(docker)
            .image_id("slipway-test:none")
            .await
            .unwrap_err();
        assert!(matches!(err, BuildError::Docker { .. }), "{err:?}");
        assert_eq!(err.code(), FailureCode::RuntimeUnreachable);
        let step = BuildError::Failed {
            tag: "t".into(),
            message: "The command '/bin/sh -c false' returned a non-zero code: 1".into(),
        };
        assert_eq!(step.code(), FailureCode::BuildFailed);
        let refused = BuildError::Docker {
            action: "remove",
            image: "t".into(),
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 500,
                message: "driver failed".into(),
            },
        };
        assert_eq!(refused.code(), FailureCode::RuntimeFailed);
    }

    #[test]
    fn a_vanished_cached_layer_is_told_from_other_build_failures() {
        // What Docker 20.10's classic builder says when a layer it took from the cache is
        // removed before the next step: a COPY or ADD, and a layer read while it is removed.
        let id = "sha256:f388058afec38bf952e6de8ba18393f9d20074e9cf761a9288fc20eb8fe22277";
        assert!(cached_layer_vanished(&format!(
            "failed to get destination image \"{id}\": No such image: {id}"
        )));
        assert!(cached_layer_vanished(&format!("No such image: {id}")));
        // And when the layer a step's result is committed on top of goes before the commit.
        assert!(cached_layer_vanished(&format!(
            "failed to export image: failed to set parent {id}: unknown parent image ID {id}"
        )));
        assert!(cached_layer_vanished(&format!(
            "failed to get digest {id}: open /var/lib/docker/image/overlay2/imagedb/content/{}: no such file or directory",
            id.replace(':', "/")
        )));
        // A base image that is missing, a step that fails, a file that is not in the context.
        assert!(!cached_layer_vanished("No such image: nosuch:latest"));
        assert!(!cached_layer_vanished(
            "pull access denied for nosuch, repository does not exist or may require 'docker login'"
        ));
        assert!(!cached_layer_vanished(
            "The command '/bin/sh -c false' returned a non-zero code: 1"
        ));
        assert!(!cached_layer_vanished(
            "COPY failed: file not found in build context or excluded by .dockerignore: stat missing: file does not exist"
        ));
    }

    fn read(output: &str) -> Layers {
        let mut layers = Layers::default();
        output.lines().for_each(|line| layers.read(line));
        layers
    }

    #[test]
    fn only_the_layers_a_build_committed_are_its_own() {
        // What Docker 20.10's classic builder prints: the base image's ID after FROM, a cached
        // step's ID after "Using cache", and a new layer's ID after each other step.
        let layers = read(
            "Step 1/5 : FROM base:1\n ---> d1371b4fd69d\nStep 2/5 : COPY a /a\n ---> Using cache\n \
             ---> 278bd53efdc7\nStep 3/5 : ENV A=1\n ---> Running in 97c3415569c4\n\
             Removing intermediate container 97c3415569c4\n ---> 7e53774600a0\n\
             Step 4/5 : RUN [\"/busybox\",\"true\"]\n ---> Running in 345d4c0fa86f\n ---> d2371b4fd69e\n\
             Step 5/5 : COPY b /b\n",
        );
        assert_eq!(layers.made, ["7e53774600a0", "d2371b4fd69e"]);
        assert_eq!(layers.tip, "d2371b4fd69e");
        assert_eq!(layers.committing(), Some("COPY"));

        let scratch = read("Step 1/2 : FROM scratch\n ---> \nStep 2/2 : COPY big /big\n");
        assert!(scratch.made.is_empty());
        assert_eq!(scratch.tip, "");
        assert_eq!(scratch.committing(), Some("COPY"));

        // A RUN under way is killed, not committed; nothing is under way after a result.
        let running = read(
            "Step 1/2 : FROM scratch\n ---> \nStep 2/2 : RUN [\"/x\"]\n ---> Running in 345d4c0fa86f\n",
        );
        assert_eq!(running.committing(), None);
        let done = read("Step 1/1 : FROM scratch\n ---> \n");
        assert_eq!(done.committing(), None);
    }
}
