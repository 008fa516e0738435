//! Parsing and validating a spec: every refusal names the field path and what was expected.

use std::fmt;

use serde_json::Value;

use crate::spec::{AppSpec, ComponentKind, ComponentRef, EnvVar, HealthCheck, RolloutSpec};

/// One thing wrong with a spec, or one warning about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The field path, e.g. `services[1].name`; empty for the document as a whole.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A spec that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text is neither valid YAML nor valid JSON.
    #[error("the spec is not valid YAML or JSON: {0}")]
    Syntax(String),
    /// The document parsed but is not a valid app spec.
    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

impl SpecError {
    /// The problems, each naming its field path.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            SpecError::Syntax(m) => vec![Problem::new("", m.clone())],
            SpecError::Invalid(p) => p.clone(),
        }
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A spec that passed validation, with the warnings it raised.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSpec {
    pub spec: AppSpec,
    /// Fields App Platform defines that Slipway accepts but does not implement.
    pub warnings: Vec<Problem>,
}

/// Parses a spec from YAML or JSON text and validates it.
pub fn parse_spec(text: &str) -> Result<ParsedSpec, SpecError> {
    parse_spec_value(parse_document(text)?)
}

/// Reads YAML or JSON text into a JSON value, without validating it as a spec (what a client
/// sends for the daemon to validate).
pub fn parse_document(text: &str) -> Result<Value, SpecError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))
    }
}

/// Validates a spec already parsed into a JSON value (the body of an API request).
pub fn parse_spec_value(mut value: Value) -> Result<ParsedSpec, SpecError> {
    if !value.is_object() {
        return Err(SpecError::Invalid(vec![Problem::new(
            "",
            format!(
                "expected an object with the app's fields, got {}",
                kind_of(&value)
            ),
        )]));
    }
    let mut warnings = Vec::new();
    strip_unimplemented(&mut value, &mut warnings);
    let spec: AppSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        SpecError::Invalid(vec![Problem::new(path, e.into_inner().to_string())])
    })?;
    let problems = validate(&spec);
    if problems.is_empty() {
        Ok(ParsedSpec { spec, warnings })
    } else {
        Err(SpecError::Invalid(problems))
    }
}

/// The daemon flag that lets specs name repositories on the daemon's own disk.
pub const ALLOW_LOCAL_SOURCES_FLAG: &str = "--allow-local-sources";

/// Refuses every `git.repo_clone_url` that names a path on the daemon's disk (a path or a
/// `file://` URL): such a spec would read whatever the daemon's user can read. A daemon
/// started with `--allow-local-sources` (tests, the demo, a single-user machine) skips this.
pub fn check_local_sources(spec: &AppSpec) -> Result<(), SpecError> {
    let lists: [(&str, Vec<ComponentRef<'_>>); 3] = [
        (
            "services",
            spec.services.iter().map(|c| c.common()).collect(),
        ),
        ("workers", spec.workers.iter().map(|c| c.common()).collect()),
        ("jobs", spec.jobs.iter().map(|c| c.common()).collect()),
    ];
    let mut problems = Vec::new();
    for (list, components) in lists {
        for (i, c) in components.into_iter().enumerate() {
            if let Some(git) = c.git
                && crate::remote::parse_remote(&git.repo_clone_url).kind
                    == crate::remote::RemoteKind::Local
            {
                problems.push(Problem::new(
                    format!("{list}[{i}].git.repo_clone_url"),
                    format!(
                        "\"{}\" is a path on the daemon's host; give an https://, ssh:// or git@host:path URL (local repositories are refused unless the daemon runs with {ALLOW_LOCAL_SOURCES_FLAG})",
                        git.repo_clone_url
                    ),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SpecError::Invalid(problems))
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

const UNIMPLEMENTED_APP: &[&str] = &[
    "region",
    "alerts",
    "features",
    "maintenance",
    "egress",
    "vpc",
    "disable_edge_cache",
    "disable_email_obfuscation",
    "enhanced_threat_control_enabled",
    "functions",
    "static_sites",
];
const UNIMPLEMENTED_COMPONENT: &[&str] = &[
    "instance_size_slug",
    "autoscaling",
    "alerts",
    "log_destinations",
    "bitbucket",
    "environment_slug",
    "build_command",
    "protocol",
    "bitbucket",
];
const UNIMPLEMENTED_DATABASE: &[&str] = &[
    "cluster_name",
    "db_name",
    "db_user",
    "production",
    "size",
    "num_nodes",
];
/// What workers and jobs do not serve: App Platform defines them for services.
const SERVED_ONLY: &[&str] = &["cors", "routes"];
const UNIMPLEMENTED_INGRESS: &[&str] = &["custom_error_page_url"];
const UNIMPLEMENTED_IMAGE: &[&str] = &["registry_credentials", "deploy_on_push"];
const UNIMPLEMENTED_HOSTED_GIT: &[&str] = &["deploy_on_push"];

/// Removes the fields App Platform defines that Slipway does not implement, recording a warning
/// for each, so that the typed parse can refuse everything else it does not know.
fn strip_unimplemented(value: &mut Value, warnings: &mut Vec<Problem>) {
    strip(value, "", UNIMPLEMENTED_APP, warnings);
    if let Some(ingress) = value.get_mut("ingress") {
        strip(ingress, "ingress", UNIMPLEMENTED_INGRESS, warnings);
    }
    for list in ["services", "workers", "jobs", "databases"] {
        let Some(Value::Array(items)) = value.get_mut(list) else {
            continue;
        };
        for (i, item) in items.iter_mut().enumerate() {
            let path = format!("{list}[{i}]");
            if list == "databases" {
                strip(item, &path, UNIMPLEMENTED_DATABASE, warnings);
            } else {
                strip(item, &path, UNIMPLEMENTED_COMPONENT, warnings);
            }
            if list == "workers" || list == "jobs" {
                strip(item, &path, SERVED_ONLY, warnings);
            }
            if let Some(image) = item.get_mut("image") {
                strip(
                    image,
                    &format!("{path}.image"),
                    UNIMPLEMENTED_IMAGE,
                    warnings,
                );
            }
            for hosted in ["github", "gitlab"] {
                if let Some(src) = item.get_mut(hosted) {
                    strip(
                        src,
                        &format!("{path}.{hosted}"),
                        UNIMPLEMENTED_HOSTED_GIT,
                        warnings,
                    );
                }
            }
        }
    }
}

fn strip(value: &mut Value, path: &str, fields: &[&str], warnings: &mut Vec<Problem>) {
    let Value::Object(map) = value else { return };
    for field in fields {
        if map.remove(*field).is_some() {
            let full = if path.is_empty() {
                (*field).to_string()
            } else {
                format!("{path}.{field}")
            };
            warnings.push(Problem::new(
                full,
                "accepted for compatibility with App Platform, but not implemented by Slipway: ignored",
            ));
        }
    }
}

/// The checks serde's types cannot express.
fn validate(spec: &AppSpec) -> Vec<Problem> {
    let mut p = Vec::new();
    check_name(&mut p, "name", &spec.name);
    let total = spec.services.len() + spec.workers.len() + spec.jobs.len() + spec.databases.len();
    if total == 0 {
        p.push(Problem::new(
            "",
            "an app needs at least one service, worker, job or database",
        ));
    }
    check_envs(&mut p, "envs", &spec.envs);

    let mut seen: Vec<(&str, String)> = Vec::new();
    let lists: [(&str, Vec<&str>); 4] = [
        (
            "services",
            spec.services.iter().map(|c| c.name.as_str()).collect(),
        ),
        (
            "workers",
            spec.workers.iter().map(|c| c.name.as_str()).collect(),
        ),
        ("jobs", spec.jobs.iter().map(|c| c.name.as_str()).collect()),
        (
            "databases",
            spec.databases.iter().map(|c| c.name.as_str()).collect(),
        ),
    ];
    for (list, names) in lists {
        for (i, name) in names.into_iter().enumerate() {
            let path = format!("{list}[{i}]");
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                p.push(Problem::new(
                    format!("{path}.name"),
                    format!(
                        "\"{name}\" is already the name of {first}; component names must be unique in the app"
                    ),
                ));
            } else {
                seen.push((name, path));
            }
        }
    }

    for (i, s) in spec.services.iter().enumerate() {
        let path = format!("services[{i}]");
        check_component(&mut p, &path, s.common());
        if s.http_port == Some(0) {
            p.push(Problem::new(
                format!("{path}.http_port"),
                "must be a port from 1 to 65535",
            ));
        }
        if let Some(hc) = &s.health_check {
            check_health(&mut p, &format!("{path}.health_check"), hc);
        }
        if let Some(hc) = &s.liveness_health_check {
            check_health(&mut p, &format!("{path}.liveness_health_check"), hc);
        }
        if let Some(r) = &s.rollout {
            check_rollout(&mut p, &format!("{path}.rollout"), r);
        }
    }
    for (i, w) in spec.workers.iter().enumerate() {
        let path = format!("workers[{i}]");
        check_component(&mut p, &path, w.common());
        if let Some(r) = &w.rollout {
            check_rollout(&mut p, &format!("{path}.rollout"), r);
        }
    }
    for (i, j) in spec.jobs.iter().enumerate() {
        let path = format!("jobs[{i}]");
        check_component(&mut p, &path, j.common());
    }
    for (i, d) in spec.databases.iter().enumerate() {
        let path = format!("databases[{i}]");
        check_name(&mut p, &format!("{path}.name"), &d.name);
        check_envs(&mut p, &format!("{path}.envs"), &d.envs);
        if d.engine.is_none() && d.image.is_none() {
            p.push(Problem::new(
                path.clone(),
                "a database needs an `engine` (PG, MYSQL, REDIS, ...) or an `image`",
            ));
        }
        if let Some(dir) = &d.data_dir
            && !dir.starts_with('/')
        {
            p.push(Problem::new(
                format!("{path}.data_dir"),
                format!("\"{dir}\" must be an absolute path in the container"),
            ));
        }
        if let Some(img) = &d.image {
            check_image(&mut p, &format!("{path}.image"), img);
        }
    }
    crate::routing::check(spec, &mut p);
    p
}

/// App Platform's name rule: 2 to 32 characters, `^[a-z][a-z0-9-]{0,30}[a-z0-9]$`.
fn check_name(p: &mut Vec<Problem>, path: &str, name: &str) {
    let b = name.as_bytes();
    let ok = (2..=32).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if !ok {
        p.push(Problem::new(
            path,
            format!("\"{name}\" must match ^[a-z][a-z0-9-]{{0,30}}[a-z0-9]$"),
        ));
    }
}

fn check_component(p: &mut Vec<Problem>, path: &str, c: ComponentRef<'_>) {
    check_name(p, &format!("{path}.name"), c.name);
    match c.source_count() {
        0 => p.push(Problem::new(
            path,
            "a component needs one source: `git`, `github`, `gitlab` or `image`",
        )),
        1 => {}
        _ => p.push(Problem::new(
            path,
            "a component takes exactly one source, but names more than one of `git`, `github`, `gitlab`, `image`",
        )),
    }
    if let Some(git) = c.git {
        if git.repo_clone_url.trim().is_empty() {
            p.push(Problem::new(
                format!("{path}.git.repo_clone_url"),
                "must not be empty",
            ));
        }
        if let Some(b) = &git.branch {
            check_branch(p, &format!("{path}.git.branch"), b);
        }
    }
    for (field, src) in [("github", c.github), ("gitlab", c.gitlab)] {
        if let Some(src) = src {
            let parts: Vec<_> = src.repo.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|s| s.is_empty()) {
                p.push(Problem::new(
                    format!("{path}.{field}.repo"),
                    format!("\"{}\" must be owner/name", src.repo),
                ));
            }
            if let Some(b) = &src.branch {
                check_branch(p, &format!("{path}.{field}.branch"), b);
            }
        }
    }
    if let Some(img) = c.image {
        check_image(p, &format!("{path}.image"), img);
    }
    if let Some(dir) = c.source_dir {
        check_relative(p, &format!("{path}.source_dir"), dir);
    }
    if let Some(f) = c.dockerfile_path {
        check_relative(p, &format!("{path}.dockerfile_path"), f);
        if f.ends_with('/') || f.trim().is_empty() {
            p.push(Problem::new(
                format!("{path}.dockerfile_path"),
                format!("\"{f}\" must name a file"),
            ));
        }
    }
    if c.instance_count == Some(0) {
        p.push(Problem::new(
            format!("{path}.instance_count"),
            "must be at least 1",
        ));
    }
    if let Some(n) = c.instance_count
        && n > 250
    {
        p.push(Problem::new(
            format!("{path}.instance_count"),
            format!("{n} is more than the 250 instances a component may have"),
        ));
    }
    if let Some(cmd) = c.run_command
        && cmd.trim().is_empty()
    {
        p.push(Problem::new(
            format!("{path}.run_command"),
            "must not be empty when given",
        ));
    }
    if let Some(t) = c.termination {
        for (field, v) in [
            ("drain_seconds", t.drain_seconds),
            ("grace_period_seconds", t.grace_period_seconds),
        ] {
            if let Some(v) = v
                && !(0.0..=3600.0).contains(&v)
            {
                p.push(Problem::new(
                    format!("{path}.termination.{field}"),
                    format!("{v} must be from 0 to 3600 seconds"),
                ));
            }
        }
    }
    check_envs(p, &format!("{path}.envs"), c.envs);
}

fn check_image(p: &mut Vec<Problem>, path: &str, img: &crate::ImageSource) {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
            })
    };
    if !ok(&img.repository) {
        p.push(Problem::new(
            format!("{path}.repository"),
            format!("\"{}\" is not an image repository name", img.repository),
        ));
    }
    if let Some(tag) = &img.tag
        && (!ok(tag) || tag.contains('/'))
    {
        p.push(Problem::new(
            format!("{path}.tag"),
            format!("\"{tag}\" is not an image tag"),
        ));
    }
}

fn check_branch(p: &mut Vec<Problem>, path: &str, branch: &str) {
    let bad = branch.is_empty()
        || branch.starts_with('-')
        || branch.contains("..")
        || branch
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if bad {
        p.push(Problem::new(
            path,
            format!("\"{branch}\" is not a valid branch name"),
        ));
    }
}

/// A path inside the repository: relative, and never climbing out of it.
fn check_relative(p: &mut Vec<Problem>, path: &str, value: &str) {
    if value.starts_with('/') || value.starts_with('\\') {
        p.push(Problem::new(
            path,
            format!("\"{value}\" must be relative to the repository root"),
        ));
    } else if value.split(['/', '\\']).any(|s| s == "..") {
        p.push(Problem::new(
            path,
            format!("\"{value}\" must stay inside the repository (no `..`)"),
        ));
    } else if value.contains('\0') {
        p.push(Problem::new(path, "must not contain a NUL byte"));
    }
}

fn check_envs(p: &mut Vec<Problem>, path: &str, envs: &[EnvVar]) {
    let mut seen = Vec::new();
    for (i, env) in envs.iter().enumerate() {
        let b = env.key.as_bytes();
        let ok = !b.is_empty()
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !ok {
            p.push(Problem::new(
                format!("{path}[{i}].key"),
                format!("\"{}\" must match ^[A-Za-z_][A-Za-z0-9_]*$", env.key),
            ));
        }
        if seen.contains(&env.key.as_str()) {
            p.push(Problem::new(
                format!("{path}[{i}].key"),
                format!("\"{}\" is set twice", env.key),
            ));
        }
        seen.push(&env.key);
    }
}

fn check_health(p: &mut Vec<Problem>, path: &str, hc: &HealthCheck) {
    if let Some(hp) = &hc.http_path
        && !hp.starts_with('/')
    {
        p.push(Problem::new(
            format!("{path}.http_path"),
            format!("\"{hp}\" must start with /"),
        ));
    }
    for (field, v, min) in [
        ("initial_delay_seconds", hc.initial_delay_seconds, 0.0),
        ("period_seconds", hc.period_seconds, 0.01),
        ("timeout_seconds", hc.timeout_seconds, 0.01),
    ] {
        if let Some(v) = v
            && !(min..=3600.0).contains(&v)
        {
            p.push(Problem::new(
                format!("{path}.{field}"),
                format!("{v} must be from {min} to 3600 seconds"),
            ));
        }
    }
    for (field, v) in [
        ("success_threshold", hc.success_threshold),
        ("failure_threshold", hc.failure_threshold),
    ] {
        if v == Some(0) {
            p.push(Problem::new(
                format!("{path}.{field}"),
                "must be at least 1",
            ));
        }
    }
    if hc.port == Some(0) {
        p.push(Problem::new(
            format!("{path}.port"),
            "must be a port from 1 to 65535",
        ));
    }
}

fn check_rollout(p: &mut Vec<Problem>, path: &str, r: &RolloutSpec) {
    use crate::spec::Amount;
    let zero = |a: Option<Amount>| matches!(a, Some(Amount::Count(0) | Amount::Percent(0)));
    if zero(r.max_surge) && zero(r.max_unavailable) {
        p.push(Problem::new(
            path,
            "max_surge and max_unavailable cannot both be 0: the rollout could never replace an instance",
        ));
    }
    if let Some(v) = r.min_ready_seconds
        && !(0.0..=3600.0).contains(&v)
    {
        p.push(Problem::new(
            format!("{path}.min_ready_seconds"),
            format!("{v} must be from 0 to 3600 seconds"),
        ));
    }
}

/// The component kinds a name resolves to, for callers that must refuse some kinds.
pub fn component_kind(spec: &AppSpec, name: &str) -> Option<ComponentKind> {
    spec.kind_of(name)
}
