//! A build that fails or is abandoned leaves no layer of its own behind, and removes nothing
//! that is not its own.

use std::collections::{BTreeMap, HashSet};

use bollard::Docker;
use bollard::query_parameters::ListImagesOptionsBuilder;
use slipway_build::{BuildError, BuildSpec, ImageBuilder};
use slipway_testkit::{Janitor, unique};
use tokio_util::sync::CancellationToken;

fn context(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, *data).unwrap();
    }
    tar.into_inner().unwrap()
}

fn spec(tag: &str, daemon_id: &str, context: Vec<u8>) -> BuildSpec {
    BuildSpec {
        tag: tag.into(),
        context,
        dockerfile: "Dockerfile".into(),
        labels: BTreeMap::from([(
            slipway_spec::labels::DAEMON.to_string(),
            daemon_id.to_string(),
        )]),
        ..Default::default()
    }
}

/// The tests compare the engine's untagged images before and after: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The untagged images without children on the engine.
async fn dangling(docker: &Docker) -> HashSet<String> {
    let filters =
        std::collections::HashMap::from([("dangling".to_string(), vec!["true".to_string()])]);
    let options = ListImagesOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_images(Some(options))
        .await
        .unwrap()
        .into_iter()
        .map(|image| image.id)
        .collect()
}

/// The untagged images that were not there `before`, which are removed, so that a failing
/// test leaves nothing behind either.
async fn left_behind(docker: &Docker, before: &HashSet<String>) -> Vec<String> {
    let left: Vec<String> = dangling(docker).await.difference(before).cloned().collect();
    for id in &left {
        let _ = docker
            .remove_image(
                id,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_keeps_its_base_image_and_leaves_none_of_its_layers() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("base");
    let _janitor = Janitor::new(&daemon_id);
    let _one = ONE_AT_A_TIME.lock().await;
    let builder = ImageBuilder::new(docker.clone());
    let never = CancellationToken::new();
    let base_tag = format!("{daemon_id}-base:1");
    let base = builder
        .build(
            spec(
                &base_tag,
                &daemon_id,
                context(&[
                    ("Dockerfile", b"FROM scratch\nCOPY a /a\n"),
                    ("a", daemon_id.as_bytes()),
                ]),
            ),
            &never,
            |_| {},
        )
        .await
        .unwrap();

    // On the base: a step that commits a layer of this build's own, then one that fails.
    let before = dangling(&docker).await;
    let dockerfile = format!("FROM {base_tag}\nENV MARK={daemon_id}\nCOPY missing /missing\n");
    let err = builder
        .build(
            spec(
                &format!("{daemon_id}-app:1"),
                &daemon_id,
                context(&[("Dockerfile", dockerfile.as_bytes())]),
            ),
            &never,
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Failed { .. }), "{err:?}");
    assert_eq!(
        builder.image_id(&base_tag).await.unwrap().as_deref(),
        Some(base.id.as_str()),
        "the base image is not the failed build's to remove"
    );
    let left = left_behind(&docker, &before).await;
    assert!(
        left.is_empty(),
        "the failed build left its layers: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_canceled_while_a_copy_is_under_way_leaves_no_layer() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("abandon");
    let _janitor = Janitor::new(&daemon_id);
    let _one = ONE_AT_A_TIME.lock().await;
    let builder = ImageBuilder::new(docker.clone());
    // A file large enough that copying it takes a while after the step has begun; its name
    // is this test's own.
    let big = vec![7u8; 256 << 20];
    let name = format!("big-{daemon_id}");
    // A small layer first: the large one lands on a layer of this build's own.
    let dockerfile =
        format!("FROM scratch\nCOPY mark /mark\nCOPY {name} /{name}\nCOPY {name} /again\n");
    let before = dangling(&docker).await;
    let cancel = CancellationToken::new();
    let on_copy = cancel.clone();
    let err = builder
        .build(
            spec(
                &format!("{daemon_id}-app:1"),
                &daemon_id,
                context(&[
                    ("Dockerfile", dockerfile.as_bytes()),
                    ("mark", daemon_id.as_bytes()),
                    (&name, &big),
                ]),
            ),
            &cancel,
            move |line| {
                if line.starts_with("Step 3/") && line.contains(" : COPY") {
                    on_copy.cancel();
                }
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Canceled { .. }), "{err:?}");
    // Docker commits the step under way after the build was abandoned (seconds later, for a
    // large file); the builder waited for it and removed it. Nothing appears afterwards.
    for _ in 0..80 {
        let left = left_behind(&docker, &before).await;
        assert!(left.is_empty(), "the canceled build left a layer: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_canceled_while_a_step_has_its_container_leaves_no_layer() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("abandon-step");
    let _janitor = Janitor::new(&daemon_id);
    let _one = ONE_AT_A_TIME.lock().await;
    let builder = ImageBuilder::new(docker.clone());
    // A layer of the build's own, then steps that each run in a container made from the one
    // before: canceled while one of those containers exists, the layer under it is in use.
    let dockerfile =
        format!("FROM scratch\nCOPY mark /mark\nENV A={daemon_id}\nENV B=2\nENV C=3\nENV D=4\n");
    let before = dangling(&docker).await;
    let cancel = CancellationToken::new();
    let on_step = cancel.clone();
    let err = builder
        .build(
            spec(
                &format!("{daemon_id}-app:1"),
                &daemon_id,
                context(&[
                    ("Dockerfile", dockerfile.as_bytes()),
                    ("mark", daemon_id.as_bytes()),
                ]),
            ),
            &cancel,
            move |line| {
                if line.trim().starts_with("---> Running in") {
                    on_step.cancel();
                }
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Canceled { .. }), "{err:?}");
    for _ in 0..40 {
        let left = left_behind(&docker, &before).await;
        assert!(left.is_empty(), "the canceled build left a layer: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
