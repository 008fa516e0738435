//! Writing an image again without the values of its SECRET build arguments.
//!
//! Docker's classic builder records the build arguments a `RUN` step sees in that step's
//! history entry and in the configuration of the image it commits
//! (`|1 TOKEN=value /bin/sh -c ...`), where `docker history --no-trunc` and
//! `docker image inspect` show them. No option of the builder keeps them out, so a build that
//! had SECRET build arguments is exported (`docker save`), its image configuration rewritten
//! with every such value replaced by `[secret]` in its history and in the configuration of the
//! container that made its last layer, and loaded again (`docker load`) under the same tag.
//! The layers are the same and are not copied again by the engine; the configuration, and so
//! the image ID, is new.

use std::io::{Read, Write};

use serde_json::Value;

/// What [`rewrite`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rewritten {
    /// Whether any value was replaced.
    pub changed: bool,
    /// The indexes (into the values given) of the values still in the image's configuration
    /// after the rewrite: put there by the Dockerfile itself (an `ENV`, `LABEL`, `WORKDIR`...
    /// made of the argument), where the image needs them to run as built.
    pub still_in_config: Vec<usize>,
}

/// The placeholder every value is replaced with.
pub(crate) const PLACEHOLDER: &str = "[secret]";

/// Copies the `docker save` archive `input` to `output`, a `docker load` archive of the same
/// layers tagged `tag`, whose configuration names none of `values` in its history or in its
/// `container_config`. The archive's legacy per-layer metadata (`<layer>/json`, which repeats
/// the configuration) and `repositories` are left out: `docker load` reads `manifest.json`.
pub(crate) fn rewrite(
    input: impl Read,
    output: impl Write,
    tag: &str,
    values: &[String],
) -> std::io::Result<Rewritten> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut archive = tar::Archive::new(input);
    let mut out = tar::Builder::new(output);
    let mut manifest: Option<Vec<u8>> = None;
    let mut configs: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let top_level = !path.trim_end_matches('/').contains('/');
        if path == "manifest.json" {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            manifest = Some(bytes);
        } else if top_level && path.ends_with(".json") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            configs.push((path, bytes));
        } else if path == "repositories" || path.ends_with("/json") || path.ends_with("/VERSION") {
        } else {
            let mut header = entry.header().clone();
            out.append_data(&mut header, &path, &mut entry)?;
        }
    }
    let manifest =
        manifest.ok_or_else(|| invalid("the saved image has no manifest.json".into()))?;
    let manifest: Value = serde_json::from_slice(&manifest)
        .map_err(|e| invalid(format!("the saved image's manifest.json: {e}")))?;
    let [image] = manifest.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(invalid(
            "the saved image's manifest.json does not list exactly one image".into(),
        ));
    };
    let config_name = image["Config"]
        .as_str()
        .ok_or_else(|| invalid("the saved image's manifest.json names no Config".into()))?;
    let (_, config) = configs
        .iter()
        .find(|(name, _)| name == config_name)
        .ok_or_else(|| invalid(format!("the saved image has no {config_name}")))?;
    let mut config: Value = serde_json::from_slice(config)
        .map_err(|e| invalid(format!("the saved image's {config_name}: {e}")))?;
    let values: Vec<&str> = values
        .iter()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect();
    let mut changed = false;
    for field in ["history", "container_config"] {
        if let Some(v) = config.get_mut(field) {
            changed |= replace_in(v, &values);
        }
    }
    let text = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
    let text_str = String::from_utf8_lossy(&text);
    let still_in_config = values
        .iter()
        .enumerate()
        .filter(|(_, v)| text_str.contains(*v))
        .map(|(i, _)| i)
        .collect();
    let new_manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": image["Layers"],
    }]);
    let new_manifest = serde_json::to_vec(&new_manifest).map_err(std::io::Error::other)?;
    for (name, bytes) in [("config.json", &text), ("manifest.json", &new_manifest)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, name, bytes.as_slice())?;
    }
    out.into_inner()?.flush()?;
    Ok(Rewritten {
        changed,
        still_in_config,
    })
}

/// Replaces every value in every string under `v`; whether any was.
fn replace_in(v: &mut Value, values: &[&str]) -> bool {
    match v {
        Value::String(s) => {
            let mut changed = false;
            for value in values {
                if s.contains(value) {
                    *s = s.replace(value, PLACEHOLDER);
                    changed = true;
                }
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |c, item| replace_in(item, values) | c),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |c, item| replace_in(item, values) | c),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(config: &Value) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes).unwrap();
        };
        let config = serde_json::to_vec(config).unwrap();
        add("abc.json", &config);
        add("l1/VERSION", b"1.0");
        add("l1/json", &config);
        add("l1/layer.tar", &[7u8; 1024]);
        add("repositories", b"{}");
        add(
            "manifest.json",
            br#"[{"Config":"abc.json","RepoTags":null,"Layers":["l1/layer.tar"]}]"#,
        );
        tar.into_inner().unwrap()
    }

    fn read(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), bytes)
            })
            .collect()
    }

    #[test]
    fn the_values_leave_the_history_and_the_layers_stay() {
        let config = serde_json::json!({
            "config": {"Env": ["PATH=/bin", "BAKED=s3cret"], "Labels": {"slipway.app": "a"}},
            "container_config": {"Cmd": ["|1 TOKEN=s3cret /hello has-env TOKEN"]},
            "history": [
                {"created_by": "/bin/sh -c #(nop)  ARG TOKEN", "empty_layer": true},
                {"created_by": "|2 OTHER=x TOKEN=s3cret /bin/sh -c make"},
            ],
            "rootfs": {"type": "layers", "diff_ids": ["sha256:1"]},
        });
        let mut out = Vec::new();
        let r = rewrite(
            saved(&config).as_slice(),
            &mut out,
            "slipway/x-web:abc",
            &["s3cret".into(), String::new()],
        )
        .unwrap();
        assert!(r.changed);
        assert_eq!(
            r.still_in_config,
            vec![0],
            "the ENV the Dockerfile made of it"
        );
        let files = read(&out);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["l1/layer.tar", "config.json", "manifest.json"]);
        assert_eq!(files[0].1, vec![7u8; 1024]);
        let config: Value = serde_json::from_slice(&files[1].1).unwrap();
        assert_eq!(
            config["history"][1]["created_by"],
            "|2 OTHER=x TOKEN=[secret] /bin/sh -c make"
        );
        assert_eq!(
            config["container_config"]["Cmd"][0],
            "|1 TOKEN=[secret] /hello has-env TOKEN"
        );
        assert_eq!(
            config["config"]["Env"][1], "BAKED=s3cret",
            "run-time config kept"
        );
        let manifest: Value = serde_json::from_slice(&files[2].1).unwrap();
        assert_eq!(
            manifest,
            serde_json::json!([{"Config": "config.json", "RepoTags": ["slipway/x-web:abc"], "Layers": ["l1/layer.tar"]}])
        );
    }
}
