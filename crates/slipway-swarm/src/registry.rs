//! Pushing a built image to the registry every node of the swarm pulls from.

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptionsBuilder, TagImageOptionsBuilder};
use futures::StreamExt;

use crate::error::SwarmError;

/// Tags the local image `image` (an ID or a reference) as `<registry>/<repository>:<tag>`,
/// pushes it, and returns the reference pinned by digest
/// (`<registry>/<repository>:<tag>@sha256:…`), which services are given as is so that every
/// node runs exactly this image. A registry that refuses the push, or cannot be reached, is
/// [`SwarmError::Push`] with the registry's own words.
///
/// The tag stays on the local image, so that removing the image (Slipway's labels are on it)
/// removes it too.
pub async fn push(
    docker: &Docker,
    image: &str,
    registry: &str,
    repository: &str,
    tag: &str,
) -> Result<String, SwarmError> {
    let repo = format!("{registry}/{repository}");
    let reference = format!("{repo}:{tag}");
    let refused = |reason: String| SwarmError::Push {
        image: reference.clone(),
        registry: registry.to_string(),
        reason,
    };
    docker
        .tag_image(
            image,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(&repo)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .map_err(SwarmError::docker(format!(
            "tagging {image} as {reference}"
        )))?;
    let span = tracing::info_span!("swarm.push", image = %reference);
    let _enter = span.enter();
    let mut stream = docker.push_image(
        &repo,
        Some(PushImageOptionsBuilder::default().tag(tag).build()),
        // The engine wants credentials on every push; a registry without authentication
        // accepts empty ones.
        Some(DockerCredentials::default()),
    );
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(refused(detail.message.unwrap_or_default()));
                }
                if let Some(status) = info.status {
                    tracing::debug!(%status, "push");
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => return Err(refused(error)),
            Err(e) => return Err(refused(e.to_string())),
        }
    }
    let inspect = docker
        .inspect_image(&reference)
        .await
        .map_err(SwarmError::docker(format!("inspecting {reference}")))?;
    let digest = inspect
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find_map(|d| d.strip_prefix(&format!("{repo}@")).map(str::to_string))
        .ok_or_else(|| refused("the registry gave no digest for the pushed image".into()))?;
    tracing::info!(%digest, "pushed");
    Ok(format!("{reference}@{digest}"))
}
