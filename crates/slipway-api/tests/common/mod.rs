//! What the API's tests share: a real engine on a temp data dir and real Docker, its API
//! served on a loopback port, and clean-up of every Docker object when dropped.
#![allow(dead_code)]

use slipway_engine::{Engine, EngineConfig};
use slipway_testkit::{Janitor, build_hello_image, unique};

pub struct Served {
    pub base: String,
    pub docker: bollard::Docker,
    pub daemon_id: String,
    _data: tempfile::TempDir,
    _janitor: Janitor,
}

/// `None` (with a printed reason) outside CI when no Docker engine is reachable. The engine
/// allows local sources (the tests build from repositories in temp dirs).
pub async fn serve(prefix: &str, token: &str) -> Option<Served> {
    serve_with(prefix, token, true).await
}

/// [`serve`], saying whether the engine allows local sources.
pub async fn serve_with(prefix: &str, token: &str, allow_local_sources: bool) -> Option<Served> {
    let docker = slipway_testkit::docker().await?;
    let daemon_id = unique(prefix);
    let janitor = Janitor::new(&daemon_id);
    let data = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(data.path());
    config.allow_local_sources = allow_local_sources;
    config.daemon_id = daemon_id.clone();
    let engine = Engine::start(config, docker.clone()).await.unwrap();
    let router = slipway_api::router(engine, slipway_api::Auth::token(token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Some(Served {
        base,
        docker,
        daemon_id,
        _data: data,
        _janitor: janitor,
    })
}

impl Served {
    /// Builds the example app's image as `<name>:<daemon id>`; returns (repository, tag).
    pub async fn hello_image(&self, name: &str) -> (String, String) {
        build_hello_image(
            &self.docker,
            &format!("{name}:{}", self.daemon_id),
            &self.daemon_id,
            "v1",
        )
        .await
        .unwrap();
        (name.to_string(), self.daemon_id.clone())
    }
}
