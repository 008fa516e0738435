use slipway_spec::{Amount, JobKind, SpecError, parse_spec};

fn problems(text: &str) -> Vec<String> {
    match parse_spec(text) {
        Ok(p) => panic!("expected an invalid spec, got {:?}", p.spec),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_real_app_platform_spec_parses_with_warnings_for_what_is_not_implemented() {
    let parsed = parse_spec(
        r#"
name: shop
region: ams
alerts: [{rule: DEPLOYMENT_FAILED}]
envs:
  - {key: SHARED, value: "1", scope: RUN_AND_BUILD_TIME}
services:
  - name: web
    github: {repo: acme/shop, branch: main, deploy_on_push: true}
    instance_size_slug: apps-s-1vcpu-1gb
    instance_count: 3
    http_port: 3000
    health_check: {http_path: /healthz, period_seconds: 0.5}
    rollout: {max_surge: "50%", max_unavailable: 1}
workers:
  - name: queue
    git: {repo_clone_url: /srv/git/shop.git, branch: main}
    source_dir: worker
    dockerfile_path: worker/Dockerfile
jobs:
  - name: migrate
    kind: PRE_DEPLOY
    image: {registry_type: DOCKER_HUB, repository: acme/migrate, tag: "1.2"}
databases:
  - name: db
    engine: PG
    version: "16"
"#,
    )
    .unwrap();
    let warned: Vec<&str> = parsed.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        warned,
        [
            "region",
            "alerts",
            "services[0].instance_size_slug",
            "services[0].github.deploy_on_push"
        ]
    );
    let spec = parsed.spec;
    assert_eq!(spec.services[0].common().instance_count(), 3);
    assert_eq!(
        spec.services[0].rollout.as_ref().unwrap().max_surge,
        Some(Amount::Percent(50))
    );
    assert_eq!(spec.workers[0].common().source_dir(), "worker");
    assert_eq!(
        spec.workers[0].common().dockerfile_path(),
        "worker/Dockerfile"
    );
    assert_eq!(spec.jobs[0].kind(), JobKind::PreDeploy);
    assert_eq!(
        spec.jobs[0].image.as_ref().unwrap().reference(),
        "acme/migrate:1.2"
    );
    assert_eq!(
        spec.databases[0].image_and_data_dir(),
        Some(("postgres:16".into(), "/var/lib/postgresql/data".into()))
    );
}

#[test]
fn json_specs_parse_too() {
    let p = parse_spec(
        r#"{"name": "api", "services": [{"name": "web", "image": {"repository": "hello"}}]}"#,
    )
    .unwrap();
    assert_eq!(
        p.spec.services[0].image.as_ref().unwrap().reference(),
        "hello:latest"
    );
    assert_eq!(p.spec.services[0].common().dockerfile_path(), "Dockerfile");
}

#[test]
fn a_bad_name_names_its_path_and_the_rule() {
    let p = problems(
        "name: shop\nservices:\n  - {name: web, image: {repository: a}}\n  - {name: Web, image: {repository: a}}\n",
    );
    assert_eq!(
        p,
        [r#"services[1].name: "Web" must match ^[a-z][a-z0-9-]{0,30}[a-z0-9]$"#]
    );
}

#[test]
fn duplicates_missing_and_double_sources_and_zero_instances_are_refused() {
    let p = problems(
        r#"
name: shop
services:
  - {name: web, image: {repository: a}, instance_count: 0}
workers:
  - {name: web, image: {repository: a}, git: {repo_clone_url: /x}}
jobs:
  - {name: nothing}
"#,
    );
    assert!(
        p.contains(&"services[0].instance_count: must be at least 1".to_string()),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("workers[0].name: \"web\" is already the name of services[0]")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("workers[0]: a component takes exactly one source")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("jobs[0]: a component needs one source")),
        "{p:?}"
    );
}

#[test]
fn a_field_app_platform_does_not_define_is_refused_with_its_path() {
    let p =
        problems("name: shop\nservices:\n  - {name: web, image: {repository: a}, colour: blue}\n");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("services[0].colour: unknown field `colour`, expected one of `name`"),
        "{p:?}"
    );
    let p = problems(
        "name: shop\nservices:\n  - {name: web, image: {repository: a}, instance_count: many}\n",
    );
    assert!(
        p[0].starts_with("services[0].instance_count: invalid type: string \"many\""),
        "{p:?}"
    );
}

#[test]
fn paths_outside_the_repository_are_refused() {
    let p = problems(
        "name: shop\nservices:\n  - {name: web, git: {repo_clone_url: /r}, source_dir: ../etc, dockerfile_path: /Dockerfile}\n",
    );
    assert_eq!(
        p,
        [
            "services[0].source_dir: \"../etc\" must stay inside the repository (no `..`)",
            "services[0].dockerfile_path: \"/Dockerfile\" must be relative to the repository root",
        ]
    );
}

#[test]
fn envs_rollout_bounds_and_health_checks_are_checked() {
    let p = problems(
        r#"
name: shop
services:
  - name: web
    image: {repository: a}
    envs: [{key: "BAD-KEY", value: x}]
    rollout: {max_surge: 0, max_unavailable: "0%"}
    health_check: {http_path: healthz, period_seconds: 0}
ingress:
  rules: [{match: {path: {prefix: /api}}, component: {name: nope}}]
"#,
    );
    assert_eq!(
        p,
        [
            "services[0].envs[0].key: \"BAD-KEY\" must match ^[A-Za-z_][A-Za-z0-9_]*$",
            "services[0].health_check.http_path: \"healthz\" must start with /",
            "services[0].health_check.period_seconds: 0 must be from 0.01 to 3600 seconds",
            "services[0].rollout: max_surge and max_unavailable cannot both be 0: the rollout could never replace an instance",
            "ingress.rules[0].component.name: \"nope\" is not a service of this app",
        ]
    );
}

#[test]
fn syntax_errors_and_non_objects_are_clear() {
    assert!(matches!(
        parse_spec("name: [unclosed"),
        Err(SpecError::Syntax(_))
    ));
    assert_eq!(
        problems("- just\n- a list\n"),
        ["expected an object with the app's fields, got a list"]
    );
    assert_eq!(
        problems("name: shop\n"),
        ["an app needs at least one service, worker, job or database"]
    );
}
