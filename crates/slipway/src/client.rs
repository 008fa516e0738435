//! The API client the CLI uses.

use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::de::DeserializeOwned;
use serde_json::Value;
use slipway_spec::Deployment;

use crate::paths;

#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub(crate) fn new(base: &str, token: &str) -> anyhow::Result<Client> {
        let http = http_client()?
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot make an HTTP client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// From `SLIPWAY_API_URL` (default `http://127.0.0.1:7400`) and `SLIPWAY_TOKEN`, else the
    /// token file of the default data dir.
    pub(crate) fn from_env() -> anyhow::Result<Client> {
        let base =
            std::env::var("SLIPWAY_API_URL").unwrap_or_else(|_| "http://127.0.0.1:7400".into());
        let token = match std::env::var("SLIPWAY_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => {
                let path = paths::default_data_dir().join("token");
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .map_err(|_| {
                        anyhow!(
                            "no API token: set SLIPWAY_TOKEN, or run the CLI as the user whose daemon keeps its token in {}",
                            path.display()
                        )
                    })?
            }
        };
        Client::new(&base, &token)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the Slipway API at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("the API's answer was cut off")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if status.is_success() {
            return Ok(value);
        }
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| format!("{status}: {text}"), str::to_string);
        let mut message = message;
        if let Some(problems) = value.get("problems").and_then(Value::as_array)
            && problems.len() > 1
        {
            message = problems
                .iter()
                .filter_map(|p| {
                    Some(format!(
                        "{}: {}",
                        p.get("path")?.as_str()?,
                        p.get("message")?.as_str()?
                    ))
                })
                .collect::<Vec<_>>()
                .join("\n  ");
            message = format!("invalid app spec:\n  {message}");
        }
        Err(anyhow!(message))
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }
    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    pub(crate) async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }
    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Copies a (signed) URL's body to stdout as it arrives.
    pub(crate) async fn stream_to_stdout(&self, url: &str) -> anyhow::Result<()> {
        use futures::StreamExt;
        use std::io::Write;
        let resp = http_client()?
            .build()?
            .get(url)
            .send()
            .await
            .map_err(|e| anyhow!("cannot read the log: {}", root_cause(&e)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(anyhow!(
                "reading the log failed ({status}): {}",
                text.trim()
            ));
        }
        let mut body = resp.bytes_stream();
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| anyhow!("the log stream broke: {}", root_cause(&e)))?;
            out.write_all(&chunk)?;
            out.flush()?;
        }
        Ok(())
    }

    /// Prints an app's Server-Sent Events as JSON lines (`{"event": ..., "data": ...}`).
    pub(crate) async fn events_to_stdout(&self, path: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut events = self.events(path).await?;
        let mut out = std::io::stdout().lock();
        while let Some(event) = events.recv().await {
            let (event, data) = event?;
            writeln!(out, "{}", serde_json::json!({"event": event, "data": data}))?;
            out.flush()?;
        }
        Ok(())
    }

    /// An app's Server-Sent Events at `path`, as `(event, data)` in the order they come; the
    /// last item is an error when the stream broke rather than ended.
    pub(crate) async fn events(
        &self,
        path: &str,
    ) -> anyhow::Result<tokio::sync::mpsc::Receiver<anyhow::Result<(String, Value)>>> {
        use futures::StreamExt;
        let resp = http_client()?
            .build()?
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach the Slipway API at {}: {}",
                    self.base,
                    root_cause(&e)
                )
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(anyhow!(
                "{}",
                v["message"]
                    .as_str()
                    .map_or_else(|| status.to_string(), str::to_string)
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buffer = String::new();
            let mut event = String::new();
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx
                            .send(Err(anyhow!("the event stream broke: {}", root_cause(&e))))
                            .await;
                        return;
                    }
                };
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find('\n') {
                    let line: String = buffer.drain(..=end).collect();
                    let line = line.trim_end();
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim().to_string();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        let data: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                        if tx.send(Ok((event.clone(), data))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    pub(crate) async fn deployment(&self, app: &str, id: &str) -> anyhow::Result<Deployment> {
        let v = self
            .get(&format!("/v2/apps/{app}/deployments/{id}"))
            .await?;
        field(v, "deployment")
    }
}

/// An HTTP client builder that trusts `SLIPWAY_CA_CERT` (a PEM file) besides the system's
/// roots, for daemons with a self-signed certificate.
pub(crate) fn http_client() -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = std::env::var_os("SLIPWAY_CA_CERT").filter(|p| !p.is_empty()) {
        let pem = std::fs::read(&path)
            .with_context(|| format!("cannot read SLIPWAY_CA_CERT {}", path.to_string_lossy()))?;
        let cert = reqwest::Certificate::from_pem(&pem).with_context(|| {
            format!(
                "SLIPWAY_CA_CERT {} is not a PEM certificate",
                path.to_string_lossy()
            )
        })?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

/// Takes `key` out of an API answer and reads it as `T`.
pub(crate) fn field<T: DeserializeOwned>(mut v: Value, key: &str) -> anyhow::Result<T> {
    let inner = v
        .get_mut(key)
        .map(Value::take)
        .ok_or_else(|| anyhow!("the API's answer has no \"{key}\""))?;
    serde_json::from_value(inner)
        .with_context(|| format!("the API's \"{key}\" is not what this CLI reads"))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}
