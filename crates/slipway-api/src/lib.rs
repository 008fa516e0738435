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
pub mod server;
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
    signed_url_seconds: i64,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    ReadOnly,
    ReadWrite,
}

/// How long a signed log URL stays valid unless [`Auth::signed_urls_for`] says otherwise.
pub const SIGNED_URL_SECONDS: i64 = 15 * 60;

/// Which token a request presented: what the log URLs it asks for are signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub scope: Scope,
    /// `daemon` for the daemon's own token, else the stored token's ID.
    pub token_id: String,
    /// The key that signs URLs for this token.
    key: [u8; 32],
}

/// The `tok` of a URL signed for the daemon's own token.
const DAEMON_TOKEN_ID: &str = "daemon";

/// Why a signed URL is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignedUrlError {
    /// The signature does not match (the URL was changed, or made for another daemon token).
    Invalid,
    /// The token it was signed for was revoked, or deleted.
    Revoked { token_id: String },
    /// Its time is up.
    Expired { at: jiff::Timestamp, lifetime: i64 },
}

impl std::fmt::Display for SignedUrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignedUrlError::Invalid => f.write_str(
                "this signed URL is not valid (it was changed, or signed by another daemon): ask the API for a new one",
            ),
            SignedUrlError::Revoked { token_id } => write!(
                f,
                "the token {token_id} this URL was signed for was revoked: ask the API for a new URL with a live token"
            ),
            SignedUrlError::Expired { at, lifetime } => write!(
                f,
                "this signed URL expired at {at} (signed log URLs are valid for {lifetime} seconds): ask the API for a new one"
            ),
        }
    }
}

/// The digest under which a token is stored (SHA-256, hex).
pub fn token_digest(token: &str) -> String {
    hex(&digest(token))
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
            signed_url_seconds: SIGNED_URL_SECONDS,
        }
    }

    /// Also accepts the live tokens in `store`.
    pub fn with_store(mut self, store: slipway_store::Store) -> Auth {
        self.store = Some(store);
        self
    }

    /// Signed log URLs stay valid for `seconds` (at least 1).
    pub fn signed_urls_for(mut self, seconds: i64) -> Auth {
        self.signed_url_seconds = seconds.max(1);
        self
    }

    /// What `presented` may do, or `None` when it is not a valid token.
    pub(crate) async fn scope(&self, presented: &str) -> Option<Scope> {
        self.identify(presented).await.map(|c| c.scope)
    }

    /// The caller presenting `presented`, or `None` when it is not a valid token.
    pub(crate) async fn identify(&self, presented: &str) -> Option<Caller> {
        if self.accepts(presented) {
            return Some(Caller {
                scope: Scope::ReadWrite,
                token_id: DAEMON_TOKEN_ID.to_string(),
                key: self.url_key(DAEMON_TOKEN_ID, ""),
            });
        }
        let store = self.store.as_ref()?;
        let record = store.live_token(&token_digest(presented)).await.ok()??;
        Some(Caller {
            scope: if record.read_only {
                Scope::ReadOnly
            } else {
                Scope::ReadWrite
            },
            key: self.url_key(&record.id, &record.digest),
            token_id: record.id,
        })
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    pub fn accepts(&self, presented: &str) -> bool {
        eq(&digest(presented), &self.token_digest)
    }

    /// The key that signs URLs for one token: it depends on the daemon's token (so nobody
    /// without it can make one) and on that token's ID and digest (so that a URL is only
    /// good while that token lives).
    fn url_key(&self, token_id: &str, token_digest: &str) -> [u8; 32] {
        hmac_sha256(
            &self.token_digest,
            format!("slipway signed URL\n{token_id}\n{token_digest}").as_bytes(),
        )
    }

    /// Signs a URL path and query for `caller`, so that it can be fetched without a token
    /// until it expires and while the caller's token lives: the log URLs the API hands out,
    /// as App Platform's are pre-signed. Returns the whole signed path and query.
    pub(crate) fn sign(&self, caller: &Caller, path_and_query: &str) -> String {
        let exp = jiff::Timestamp::now().as_second() + self.signed_url_seconds;
        let signed = format!("{path_and_query}&tok={}", caller.token_id);
        let sig = hex(&hmac_sha256(
            &caller.key,
            format!("{exp}\n{signed}").as_bytes(),
        ));
        format!("{signed}&exp={exp}&sig={sig}")
    }

    /// Checks a signed URL: `signed` is its path and query up to `&exp=` (with its `tok`).
    /// The signature is checked first, so that only a URL the API made learns why it is no
    /// longer good.
    pub(crate) async fn verify(
        &self,
        signed: &str,
        exp: i64,
        sig: &str,
    ) -> Result<(), SignedUrlError> {
        let Some((_, token_id)) = signed.rsplit_once("&tok=") else {
            return Err(SignedUrlError::Invalid);
        };
        let (key, revoked) = if token_id == DAEMON_TOKEN_ID {
            (self.url_key(DAEMON_TOKEN_ID, ""), false)
        } else {
            let Some(store) = self.store.as_ref() else {
                return Err(SignedUrlError::Invalid);
            };
            let tokens = store.tokens().await.map_err(|e| {
                tracing::warn!(error = %e, "cannot read the tokens to check a signed URL");
                SignedUrlError::Invalid
            })?;
            let Some(record) = tokens.into_iter().find(|t| t.id == token_id) else {
                return Err(SignedUrlError::Invalid);
            };
            (
                self.url_key(&record.id, &record.digest),
                record.revoked_at.is_some(),
            )
        };
        let expected = hex(&hmac_sha256(&key, format!("{exp}\n{signed}").as_bytes()));
        if expected.len() != sig.len() || !eq(expected.as_bytes(), sig.as_bytes()) {
            return Err(SignedUrlError::Invalid);
        }
        if revoked {
            return Err(SignedUrlError::Revoked {
                token_id: token_id.to_string(),
            });
        }
        if exp < jiff::Timestamp::now().as_second() {
            return Err(SignedUrlError::Expired {
                at: jiff::Timestamp::from_second(exp).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                lifetime: self.signed_url_seconds,
            });
        }
        Ok(())
    }
}

/// Whether two byte strings of the same length are equal, in time that does not depend on
/// where they differ.
fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
