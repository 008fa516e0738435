//! Slipway's HTTP API: App Platform's v2 paths and JSON, so that clients written for App
//! Platform work by changing only the endpoint and the token.
//!
//! Promises:
//! - every route but `GET /healthz` needs `Authorization: Bearer <token>`, compared in
//!   constant time (or the web panel's cookie, see [`panel`]);
//! - errors are App Platform's body `{"id", "message"}` with the matching status: `bad_request`
//!   400 (malformed JSON, an invalid spec: the message names the field path),
//!   `unauthorized` 401, `not_found` 404, `request_entity_too_large` 413,
//!   `unprocessable_entity` 422 (a request the app's state refuses), `internal_server_error`
//!   500 (the details are logged, not shown);
//! - objects are wrapped as App Platform wraps them (`{"app": ...}`, `{"deployment": ...}`,
//!   `{"deployments": [...], "links": ..., "meta": {"total": N}}`).

mod doc;
mod error;
mod instances;
mod logs;
pub mod panel;
mod routes;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use slipway_engine::Engine;

pub use error::ApiError;
pub use routes::openapi_json;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Who may call the API: the daemon's own token (read-write), and the tokens made with
/// `slipway tokens` (stored as digests, read-only or read-write, revocable).
#[derive(Clone)]
pub struct Auth {
    token_digest: [u8; 32],
    store: Option<slipway_store::Store>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    ReadOnly,
    ReadWrite,
}

/// The digest under which a token is stored (SHA-256, hex).
pub fn token_digest(token: &str) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

impl Auth {
    /// Accepts requests that present `token`.
    pub fn token(token: &str) -> Auth {
        Auth {
            token_digest: digest(token),
            store: None,
        }
    }

    /// Also accepts the live tokens in `store`.
    pub fn with_store(mut self, store: slipway_store::Store) -> Auth {
        self.store = Some(store);
        self
    }

    /// What `presented` may do, or `None` when it is not a valid token.
    pub(crate) async fn scope(&self, presented: &str) -> Option<Scope> {
        if self.accepts(presented) {
            return Some(Scope::ReadWrite);
        }
        let store = self.store.as_ref()?;
        let record = store.live_token(&token_digest(presented)).await.ok()??;
        Some(if record.read_only {
            Scope::ReadOnly
        } else {
            Scope::ReadWrite
        })
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    pub fn accepts(&self, presented: &str) -> bool {
        let d = digest(presented);
        d.iter()
            .zip(self.token_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Auth {
    /// Signs a URL path and query so that it can be fetched without a token until `exp`
    /// (seconds since the epoch): the log URLs the API hands out, as App Platform's are
    /// pre-signed.
    pub(crate) fn sign(&self, path_and_query: &str, exp: i64) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.token_digest)
            .expect("HMAC takes a key of any length");
        mac.update(format!("{exp}\n{path_and_query}").as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `sig` signs `path_and_query` until `exp`, and `exp` has not passed.
    pub(crate) fn verify(&self, path_and_query: &str, exp: i64, sig: &str) -> bool {
        if exp < jiff::Timestamp::now().as_second() {
            return false;
        }
        let expected = self.sign(path_and_query, exp);
        expected.len() == sig.len()
            && expected
                .bytes()
                .zip(sig.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn digest(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

#[derive(Debug, Clone)]
pub(crate) struct State {
    pub engine: Engine,
    pub auth: Auth,
}

/// The API's routes over `engine`.
pub fn router(engine: Engine, auth: Auth) -> Router {
    routes::router(Arc::new(State { engine, auth }))
}
