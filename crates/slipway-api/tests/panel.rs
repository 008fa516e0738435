//! The web panel's server side over real HTTP: its page and assets, sign-in and sign-out, the
//! cookie the API accepts (and the header it requires with it for changes), and the instances
//! endpoint the panel reads.

use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use slipway_engine::{Engine, EngineConfig};
use slipway_testkit::{Janitor, build_hello_image, unique};

const TOKEN: &str = "test-token-for-the-panel";
const READER: &str = "slw_read_only_token_for_the_panel";

struct Server {
    base: String,
    http: reqwest::Client,
    tag: String,
    _data: tempfile::TempDir,
    _janitor: Janitor,
}

/// A daemon's API (with a read-only token in its store), over HTTP or, with `tls`, HTTPS.
async fn server(tls: bool) -> Option<Server> {
    let docker = slipway_testkit::docker().await?;
    let daemon_id = unique("panelapi");
    let janitor = Janitor::new(&daemon_id);
    let tag = format!("slipway-panel-test:{daemon_id}");
    let data = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(data.path());
    config.allow_local_sources = true;
    config.daemon_id = daemon_id.clone();
    let engine = Engine::start(config, docker.clone()).await.unwrap();
    if !tls {
        build_hello_image(&docker, &tag, &daemon_id, "v1")
            .await
            .unwrap();
    }
    engine
        .store()
        .insert_token(&slipway_store::TokenRecord {
            id: "t1".into(),
            name: "reader".into(),
            digest: slipway_api::token_digest(READER),
            read_only: true,
            created_at: jiff::Timestamp::now(),
            revoked_at: None,
        })
        .await
        .unwrap();
    let auth = slipway_api::Auth::token(TOKEN).with_store(engine.store().clone());
    let router = slipway_api::router(engine, auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (base, http) = if tls {
        let files = slipway_api::tls::self_signed(
            &data.path().join("tls"),
            &["127.0.0.1".to_string(), "localhost".to_string()],
        )
        .unwrap();
        let acceptor = slipway_api::tls::acceptor(&files).unwrap();
        tokio::spawn(slipway_api::server::serve(
            listener,
            router,
            Some(acceptor),
            slipway_api::server::ServerConfig::default(),
            tokio_util::sync::CancellationToken::new(),
        ));
        let pem = std::fs::read(&files.cert).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        (format!("https://{addr}"), http)
    } else {
        tokio::spawn(async move { axum::serve(listener, router).await });
        (format!("http://{addr}"), reqwest::Client::new())
    };
    Some(Server {
        base,
        http,
        tag,
        _data: data,
        _janitor: janitor,
    })
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs in; returns the Set-Cookie header and the `Cookie` to send back.
    async fn sign_in(&self, token: &str) -> (String, String) {
        let r = self
            .http
            .post(self.url("/panel/session"))
            .header("X-Slipway-Panel", "1")
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let set = r
            .headers()
            .get(SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let pair = set.split(';').next().unwrap().to_string();
        (set, pair)
    }

    async fn with_cookie(
        &self,
        method: reqwest::Method,
        path: &str,
        cookie: &str,
        panel_header: bool,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header(COOKIE, cookie);
        if panel_header {
            req = req.header("X-Slipway-Panel", "1");
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_sign_in_and_the_cookie() {
    let Some(s) = server(false).await else { return };

    // The page and its assets need no token, and say what they may load.
    for (path, kind, needle) in [
        ("/", "text/html", "<script src=\"/panel/panel.js\""),
        ("/panel/panel.js", "text/javascript", "X-Slipway-Panel"),
        ("/panel/panel.css", "text/css", "font-family"),
    ] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }

    // Sign-in refuses a bad token, an empty one, and a request without the panel's header.
    let r = s
        .http
        .post(s.url("/panel/session"))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get(SET_COOKIE).is_none());
    for (token, status) in [("wrong", 401), ("  ", 400)] {
        let r = s
            .http
            .post(s.url("/panel/session"))
            .header("X-Slipway-Panel", "1")
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{token:?}");
        assert!(r.headers().get(SET_COOKIE).is_none());
        let v: Value = r.json().await.unwrap();
        assert!(v["message"].is_string(), "{v}");
    }

    // The right token: an HttpOnly, SameSite=Strict cookie (not Secure over plain HTTP).
    let (set, cookie) = s.sign_in(TOKEN).await;
    assert!(set.starts_with("slipway_token="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "{set}");
    let (status, v) = s
        .with_cookie(reqwest::Method::GET, "/panel/session", &cookie, false)
        .await;
    assert_eq!(
        (status, v),
        (200, json!({"signed_in": true, "scope": "read-write"}))
    );

    // The API takes the cookie for reads; for changes it also needs the panel's header.
    let (status, v) = s
        .with_cookie(reqwest::Method::GET, "/v2/apps", &cookie, false)
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .with_cookie(
            reqwest::Method::POST,
            "/v2/apps/nope/restart",
            &cookie,
            false,
        )
        .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["id"], "forbidden");
    assert!(
        v["message"].as_str().unwrap().contains("X-Slipway-Panel"),
        "{v}"
    );
    let (status, v) = s
        .with_cookie(
            reqwest::Method::POST,
            "/v2/apps/nope/restart",
            &cookie,
            true,
        )
        .await;
    assert_eq!(status, 404, "past authentication: {v}");
    // A cookie of a token that is not valid is refused like a bad bearer token.
    let (status, v) = s
        .with_cookie(
            reqwest::Method::GET,
            "/v2/apps",
            "slipway_token=wrong",
            false,
        )
        .await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = s
        .with_cookie(
            reqwest::Method::GET,
            "/panel/session",
            "slipway_token=wrong",
            false,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["signed_in"], false);
    // The bearer header still works alone.
    let r = s
        .http
        .get(s.url("/v2/apps"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A read-only token signs in as such, and cannot change anything.
    let (_, reader) = s.sign_in(READER).await;
    let (_, v) = s
        .with_cookie(reqwest::Method::GET, "/panel/session", &reader, false)
        .await;
    assert_eq!(v["scope"], "read-only");
    let (status, v) = s
        .with_cookie(
            reqwest::Method::POST,
            "/v2/apps/nope/restart",
            &reader,
            true,
        )
        .await;
    assert_eq!(status, 403);
    assert!(v["message"].as_str().unwrap().contains("read-only"), "{v}");

    // Sign-out clears the cookie (and needs the header too).
    let (status, _) = s
        .with_cookie(reqwest::Method::DELETE, "/panel/session", &cookie, false)
        .await;
    assert_eq!(status, 403);
    let r = s
        .http
        .delete(s.url("/panel/session"))
        .header(COOKIE, &cookie)
        .header("X-Slipway-Panel", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cleared = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("slipway_token=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_cookie_is_secure() {
    let Some(s) = server(true).await else { return };
    let r = s.http.get(s.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (set, cookie) = s.sign_in(TOKEN).await;
    assert!(set.contains("Secure") && set.contains("HttpOnly"), "{set}");
    let (status, _) = s
        .with_cookie(reqwest::Method::GET, "/v2/apps", &cookie, false)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_name_each_components_kind_image_and_containers() {
    let Some(s) = server(false).await else { return };
    let (repo, tag) = s.tag.split_once(':').unwrap();
    let name = unique("instapp");
    let spec = json!({
        "name": name,
        "services": [{"name": "web", "image": {"repository": repo, "tag": tag}, "instance_count": 2,
                      "health_check": {"http_path": "/healthz", "period_seconds": 0.2}}],
        "workers": [{"name": "worker", "image": {"repository": repo, "tag": tag},
                     "envs": [{"key": "ROLE", "value": "worker"}],
                     "rollout": {"min_ready_seconds": 0.2}}],
        "jobs": [{"name": "once", "kind": "PRE_DEPLOY", "image": {"repository": repo, "tag": tag},
                  "envs": [{"key": "ROLE", "value": "job"}]}],
    });
    let get = |path: String| {
        let req = s.http.get(s.url(&path)).bearer_auth(TOKEN);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = get("/v2/apps/nope/instances".into()).await;
    assert_eq!(status, 404, "{v}");

    let r = s
        .http
        .post(s.url("/v2/apps"))
        .bearer_auth(TOKEN)
        .json(&json!({"spec": spec}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let id = v["app"]["id"].as_str().unwrap().to_string();
    let mut active = Value::Null;
    for _ in 0..600 {
        let (_, v) = get(format!("/v2/apps/{id}")).await;
        if !v["app"]["active_deployment"].is_null() {
            active = v["app"]["active_deployment"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!active.is_null(), "the first deployment became active");

    let (status, v) = get(format!("/v2/apps/{name}/instances")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["app_id"], id.as_str());
    assert_eq!(v["active_deployment_id"], active["id"]);
    let components = v["components"].as_array().unwrap();
    let names: Vec<(&str, &str, bool)> = components
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["restartable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("web", "service", true),
            ("worker", "worker", true),
            ("once", "job", false)
        ]
    );
    let web = &components[0];
    assert_eq!(web["instance_count"], 2);
    assert_eq!(web["image"]["id"], active["services"][0]["image"]["id"]);
    assert_eq!(web["image"]["reference"], s.tag.as_str());
    let instances = web["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "{web}");
    for i in instances {
        assert_eq!(i["state"], "running", "{i}");
        assert_eq!(i["deployment_id"], active["id"]);
        assert_eq!(i["image"], web["image"]["id"]);
        assert!(i["name"].as_str().unwrap().contains("-web-"), "{i}");
        assert_eq!(i["ports"][0]["container_port"], 8080);
        // Published on the app network's gateway, an address of this host.
        let ip: std::net::Ipv4Addr = i["ports"][0]["host_ip"].as_str().unwrap().parse().unwrap();
        let port = i["ports"][0]["host_port"].as_u64().unwrap();
        let body = reqwest::get(format!("http://{ip}:{port}/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.starts_with("hello from v1"), "{body}");
    }
    assert_eq!(components[1]["instances"][0]["state"], "running");
    assert_eq!(components[1]["instance_count"], 1);
    assert!(components[2]["instance_count"].is_null());
    for i in components[2]["instances"].as_array().unwrap() {
        assert_eq!(i["state"], "exited", "a job's container has run: {i}");
    }
}
