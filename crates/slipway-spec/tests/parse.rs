use slipway_spec::{Amount, DomainType, JobKind, SpecError, parse_spec};

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

#[test]
fn domains_rules_redirects_cors_and_routes_of_a_production_spec_are_kept() {
    let parsed = parse_spec(
        r#"
name: shop
domains:
  - {domain: shop.example.com, type: PRIMARY, zone: example.com, minimum_tls_version: "1.3"}
  - {domain: example.org, type: ALIAS, wildcard: true}
services:
  - name: web
    image: {registry_type: DOCKER_HUB, repository: acme/web}
  - name: api
    image: {registry_type: DOCKER_HUB, repository: acme/api}
ingress:
  custom_error_page_url: https://example.com/oops.html
  rules:
    - match: {path: {prefix: /api}}
      component: {name: api, rewrite: /v1}
      cors:
        allow_origins: [{exact: "https://shop.example.com"}, {prefix: "https://preview-"}, {regex: "https://[a-z]+\\.example\\.org"}]
        allow_methods: [GET, POST]
        allow_headers: [Content-Type, X-Request-Id]
        expose_headers: [X-Trace]
        max_age: 1h30m
        allow_credentials: true
    - match: {path: {prefix: /old}, authority: {exact: shop.example.com}}
      redirect: {uri: /new, redirect_code: 308}
    - match: {path: {prefix: /}}
      component: {name: web, preserve_path_prefix: true}
"#,
    )
    .unwrap();
    let warned: Vec<&str> = parsed.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(warned, ["ingress.custom_error_page_url"]);
    let spec = parsed.spec;
    assert_eq!(spec.domains.len(), 2);
    assert_eq!(spec.domains[0].kind, Some(DomainType::Primary));
    assert_eq!(spec.domains[1].wildcard, Some(true));
    let rules = &spec.ingress.as_ref().unwrap().rules;
    let cors = rules[0].cors.as_ref().unwrap();
    assert_eq!(cors.allow_origins.len(), 3);
    assert_eq!(cors.max_age.as_deref(), Some("1h30m"));
    let redirect = rules[1].redirect.as_ref().unwrap();
    assert_eq!(redirect.redirect_code, Some(308));
    assert_eq!(
        rules[1]
            .matcher
            .as_ref()
            .unwrap()
            .authority
            .as_ref()
            .unwrap()
            .exact,
        "shop.example.com"
    );
    // Kept as given: the spec round-trips through JSON unchanged.
    let again: slipway_spec::AppSpec =
        serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);

    // The older form: routes and CORS on the services.
    let parsed = parse_spec(
        "name: shop\nservices:\n  - name: web\n    image: {repository: a}\n    routes: [{path: /}]\n  - name: api\n    image: {repository: a}\n    routes: [{path: /api, preserve_path_prefix: true}]\n    cors: {allow_origins: [{exact: \"https://a.example.com\"}]}\n",
    )
    .unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(
        parsed.spec.services[1].routes[0].path.as_deref(),
        Some("/api")
    );
}

#[test]
fn bad_domains_rules_redirects_cors_and_routes_name_their_paths() {
    let problems = |yaml: &str| -> Vec<String> {
        parse_spec(yaml)
            .unwrap_err()
            .problems()
            .into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    };
    let base = "name: shop\nservices:\n  - name: web\n    image: {repository: a}\n";
    let found = problems(&format!(
        "{base}domains:\n  - {{domain: Shop.Example.com}}\n  - {{domain: a.example.com, type: PRIMARY}}\n  - {{domain: a.example.com, type: PRIMARY, minimum_tls_version: \"1.1\"}}\n  - {{domain: b.example.com, zone: other.com}}\n"
    ));
    let expect = [
        "domains[0].domain: \"Shop.Example.com\" must be a lower-case host name",
        "domains[2].domain: \"a.example.com\" is domains[1] already",
        "domains[2].type: only one domain may be PRIMARY, and domains[1] is",
        "domains[2].minimum_tls_version: \"1.1\" must be \"1.2\" or \"1.3\"",
        "domains[3].zone: \"other.com\" must be b.example.com or a domain it is under",
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "{e} not in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");

    let found = problems(&format!(
        "{base}ingress:\n  rules:\n    - {{match: {{path: {{prefix: /a}}}}, component: {{name: web}}, redirect: {{uri: /b}}}}\n    - {{match: {{path: {{prefix: /b}}}}, redirect: {{}}}}\n    - {{match: {{path: {{prefix: /c}}}}, redirect: {{uri: x, scheme: ftp, redirect_code: 305, authority: \"h.example.com:80\", port: 0}}}}\n    - {{match: {{path: {{prefix: /d}}, authority: {{exact: \"H.com\"}}}}, component: {{name: web, rewrite: v1, preserve_path_prefix: true}}}}\n    - {{match: {{path: {{prefix: /d}}, authority: {{exact: \"H.com\"}}}}, component: {{name: web}}}}\n    - {{match: {{path: {{prefix: /e}}}}, component: {{name: web}}, cors: {{allow_origins: [{{exact: a, prefix: b}}, {{regex: \"(\"}}], allow_methods: [\"GE T\"], max_age: \"5\"}}}}\n"
    ));
    let expect = [
        "ingress.rules[0]: a rule either routes to a `component` or answers with a `redirect`, not both",
        "ingress.rules[1].redirect: a redirect needs at least one of",
        "ingress.rules[2].redirect.uri: \"x\" must be a path",
        "ingress.rules[2].redirect.authority: \"h.example.com:80\" must be",
        "ingress.rules[2].redirect.port: must be a port from 1 to 65535",
        "ingress.rules[2].redirect.scheme: \"ftp\" must be \"http\" or \"https\"",
        "ingress.rules[2].redirect.redirect_code: 305 must be one of",
        "ingress.rules[3].component.rewrite: cannot be given with preserve_path_prefix: true",
        "ingress.rules[3].component.rewrite: \"v1\" must start with /",
        "ingress.rules[3].match.authority.exact: \"H.com\" must be",
        "ingress.rules[4].match.authority.exact: \"H.com\" must be",
        "ingress.rules[4].match: matches the same requests as ingress.rules[3]",
        "ingress.rules[5].cors.allow_origins[0]: give exactly one of `exact`, `prefix` or `regex`",
        "ingress.rules[5].cors.allow_origins[1].regex: \"(\" is not a valid regular expression",
        "ingress.rules[5].cors.allow_methods[0]: \"GE T\" must be an HTTP method",
        "ingress.rules[5].cors.max_age: \"5\" must be a duration",
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "{e} not in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");

    let found = problems(
        "name: shop\nservices:\n  - name: web\n    image: {repository: a}\n    routes: [{path: /}, {path: api}]\n  - name: api\n    image: {repository: a}\n    routes: [{path: /}]\ningress:\n  rules: [{component: {name: api}}]\n",
    );
    let expect = [
        "services[0].routes: cannot be used with ingress.rules",
        "services[0].routes[0].path: \"/\" is routed by ingress.rules[0] already",
        "services[0].routes[1].path: \"api\" must start with /",
        "services[1].routes: cannot be used with ingress.rules",
        "services[1].routes[0].path: \"/\" is routed by ingress.rules[0] already",
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "{e} not in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}
