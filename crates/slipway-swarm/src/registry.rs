//! Pushing a built image to the registry every node of the swarm pulls from, and deleting it
//! from there again.

use std::net::IpAddr;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptionsBuilder, TagImageOptionsBuilder};
use futures::StreamExt;
use slipway_spec::error_chain;

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

/// The manifest types a registry is asked for when a tag is resolved to its digest: Docker's
/// and OCI's images and lists, as `docker push` may have stored any of them.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";

/// Deletes from its registry an image that [`push`] pushed: `pushed` is the reference `push`
/// returned (`<registry>/<repository>:<tag>@sha256:…`). Returns `false` when the registry does
/// not have it (any more).
///
/// The registry is reached the way the engine reaches it: over HTTPS, or, for a registry the
/// engine counts as insecure (a loopback address, its `insecure-registries`), over HTTPS
/// without checking the certificate and then over plain HTTP. Deleting frees the tag and the
/// manifest; the layers' space comes back when the registry's own garbage collection runs. A
/// registry that refuses (one that does not allow deletes answers 405) is
/// [`SwarmError::Unpush`] with the registry's words.
pub async fn unpush(docker: &Docker, pushed: &str) -> Result<bool, SwarmError> {
    let refused = |reason: String| SwarmError::Unpush {
        image: pushed.to_string(),
        reason,
    };
    let (registry, rest) = pushed
        .split_once('/')
        .ok_or_else(|| refused("it is not a reference to a registry's image".into()))?;
    let (name, digest) = rest
        .split_once('@')
        .ok_or_else(|| refused("it is not pinned by digest (…@sha256:…)".into()))?;
    let repository = name
        .rsplit_once(':')
        .map_or(name, |(repository, _)| repository);
    let mut api = RegistryApi::new(docker, registry).await.map_err(refused)?;
    api.delete(repository, digest).await.map_err(refused)
}

/// Deletes every tag of `repository` from `registry` (what [`push`] put there for one
/// component of an app); returns how many images were deleted. A repository the registry does
/// not have is `Ok(0)`. Reached and refused as [`unpush`] is.
pub async fn unpush_repository(
    docker: &Docker,
    registry: &str,
    repository: &str,
) -> Result<usize, SwarmError> {
    let refused = |reason: String| SwarmError::Unpush {
        image: format!("{registry}/{repository}"),
        reason,
    };
    let mut api = RegistryApi::new(docker, registry).await.map_err(refused)?;
    let response = api
        .send(
            reqwest::Method::GET,
            &format!("/v2/{repository}/tags/list"),
            None,
        )
        .await
        .map_err(refused)?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(0);
    }
    if !response.status().is_success() {
        return Err(refused(answer(response).await));
    }
    #[derive(serde::Deserialize)]
    struct Tags {
        tags: Option<Vec<String>>,
    }
    let tags: Tags = response
        .json()
        .await
        .map_err(|e| refused(format!("its list of tags could not be read: {e}")))?;
    let mut deleted = 0;
    for tag in tags.tags.unwrap_or_default() {
        let response = api
            .send(
                reqwest::Method::HEAD,
                &format!("/v2/{repository}/manifests/{tag}"),
                Some(MANIFEST_TYPES),
            )
            .await
            .map_err(refused)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            continue;
        }
        if !response.status().is_success() {
            return Err(refused(format!("tag {tag}: {}", answer(response).await)));
        }
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| refused(format!("the registry gave no digest for the tag {tag}")))?;
        if api.delete(repository, &digest).await.map_err(refused)? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// A registry's HTTP API, at the scheme the engine would use for it.
struct RegistryApi {
    registry: String,
    client: reqwest::Client,
    /// The schemes to try, in order; once one answers, only that one.
    schemes: Vec<&'static str>,
}

impl RegistryApi {
    async fn new(docker: &Docker, registry: &str) -> Result<RegistryApi, String> {
        let insecure = engine_counts_insecure(docker, registry).await?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .danger_accept_invalid_certs(insecure)
            .build()
            .map_err(|e| format!("no HTTP client: {e}"))?;
        Ok(RegistryApi {
            registry: registry.to_string(),
            client,
            schemes: if insecure {
                vec!["https", "http"]
            } else {
                vec!["https"]
            },
        })
    }

    /// Sends one request; an error is what kept it from getting any answer.
    async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, String> {
        let mut failures: Vec<(&str, String)> = Vec::new();
        for (i, scheme) in self.schemes.iter().enumerate() {
            let url = format!("{scheme}://{}{path}", self.registry);
            let mut request = self.client.request(method.clone(), &url);
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            match request.send().await {
                Ok(response) => {
                    self.schemes = vec![self.schemes[i]];
                    return Ok(response);
                }
                Err(e) => failures.push((scheme, error_chain(&e.without_url()))),
            }
        }
        let reason = if failures.windows(2).all(|w| w[0].1 == w[1].1) {
            let schemes: Vec<&str> = failures.iter().map(|f| f.0).collect();
            format!(
                "over {}: {}",
                schemes.join(" or "),
                failures.first().map_or("", |f| f.1.as_str())
            )
        } else {
            failures
                .iter()
                .map(|(scheme, e)| format!("over {scheme}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        Err(format!("{} could not be reached {reason}", self.registry))
    }

    /// Deletes the manifest `digest` of `repository`; `false` when the registry has none.
    async fn delete(&mut self, repository: &str, digest: &str) -> Result<bool, String> {
        let response = self
            .send(
                reqwest::Method::DELETE,
                &format!("/v2/{repository}/manifests/{digest}"),
                None,
            )
            .await?;
        match response.status() {
            s if s.is_success() => {
                tracing::info!(registry = %self.registry, %repository, %digest, "deleted from the registry");
                Ok(true)
            }
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            reqwest::StatusCode::METHOD_NOT_ALLOWED => Err(format!(
                "the registry does not allow deleting images ({}); a registry deletes only \
                 when its configuration has `storage: delete: enabled: true` and it is not \
                 read-only",
                answer(response).await
            )),
            _ => Err(answer(response).await),
        }
    }
}

/// A registry's refusal in its own words: the status and the error codes and messages of its
/// body (`{"errors":[{"code":…,"message":…}]}`), or the body as it is.
async fn answer(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<RegistryError>,
    }
    #[derive(serde::Deserialize)]
    struct RegistryError {
        code: String,
        #[serde(default)]
        message: String,
    }
    let words = match serde_json::from_str::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => body.trim().chars().take(200).collect(),
    };
    if words.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {words}")
    }
}

/// Whether the engine counts `registry` as insecure, as it decides when it pushes: named in
/// its `insecure-registries`, or at an address in one of its insecure ranges (`127.0.0.0/8`
/// unless configured otherwise).
async fn engine_counts_insecure(docker: &Docker, registry: &str) -> Result<bool, String> {
    let info = docker
        .info()
        .await
        .map_err(|e| format!("the engine's registry settings could not be read: {e}"))?;
    let Some(config) = info.registry_config else {
        return Ok(false);
    };
    if config
        .index_configs
        .as_ref()
        .and_then(|i| i.get(registry))
        .is_some_and(|index| index.secure == Some(false))
    {
        return Ok(true);
    }
    let host = host_of(registry);
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, 0))
            .await
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default(),
    };
    Ok(config
        .insecure_registry_cidrs
        .unwrap_or_default()
        .iter()
        .any(|cidr| addresses.iter().any(|ip| in_cidr(*ip, cidr))))
}

/// The host of `host[:port]` (`[v6 address]:port` too).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => registry,
    }
}

/// Whether `ip` is in `cidr` (`address/prefix length`).
fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let Some((network, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(network), Ok(bits)) = (network.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{host_of, in_cidr};

    #[test]
    fn a_registrys_host_is_read_from_its_address() {
        assert_eq!(host_of("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(host_of("registry.example.com"), "registry.example.com");
        assert_eq!(host_of("registry.example.com:443"), "registry.example.com");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("::1"), "::1");
    }

    #[test]
    fn addresses_are_matched_against_the_engines_insecure_ranges() {
        let ip = |s: &str| s.parse().unwrap();
        assert!(in_cidr(ip("127.0.0.1"), "127.0.0.0/8"));
        assert!(in_cidr(ip("127.255.1.2"), "127.0.0.0/8"));
        assert!(!in_cidr(ip("128.0.0.1"), "127.0.0.0/8"));
        assert!(in_cidr(ip("10.1.2.3"), "10.1.2.3/32"));
        assert!(!in_cidr(ip("10.1.2.4"), "10.1.2.3/32"));
        assert!(in_cidr(ip("192.168.7.7"), "0.0.0.0/0"));
        assert!(in_cidr(ip("fd00::5"), "fd00::/8"));
        assert!(!in_cidr(ip("fe80::5"), "fd00::/8"));
        // An IPv4 address is not in an IPv6 range, and a malformed range holds nothing.
        assert!(!in_cidr(ip("127.0.0.1"), "::/0"));
        assert!(!in_cidr(ip("127.0.0.1"), "127.0.0.0"));
        assert!(!in_cidr(ip("127.0.0.1"), "127.0.0.0/33"));
    }
}
