//! The web control panel: one page served at `/`, its script and stylesheet (embedded in the
//! binary), and its sign-in and sign-out.
//!
//! Promises:
//! - the token a person signs in with is checked as the API checks it, then kept in an
//!   `HttpOnly`, `SameSite=Strict` cookie (`Secure` over HTTPS): the page's script never sees
//!   it, and it is never put in a URL or in the browser's storage;
//! - the API accepts that cookie as it accepts `Authorization: Bearer`; a request that changes
//!   something with the cookie must also carry `X-Slipway-Panel: 1`, which a page of another
//!   site cannot send without the API's consent (no CORS is granted): a forged form or link
//!   is refused with `403 forbidden`;
//! - sign-out clears the cookie.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::{Scope, State};

/// The cookie that holds the token of a signed-in panel.
pub(crate) const COOKIE: &str = "slipway_token";
/// The header the panel sends with every request; required with the cookie on anything but a
/// read.
pub(crate) const HEADER: &str = "x-slipway-panel";

/// Marks a request that reached the API over HTTPS (the TLS server adds it), so that the
/// panel's cookie is made `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct Https;

const INDEX: &str = include_str!("../panel/index.html");
const SCRIPT: &str = include_str!("../panel/panel.js");
const STYLE: &str = include_str!("../panel/panel.css");

/// What the page may load and where it may connect: only this origin, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/panel/panel.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/panel/panel.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/panel/session",
            get(session).post(sign_in).delete(sign_out),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// The token in the panel's cookie, if the request carries one.
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| decode(value))
        .filter(|t| !t.is_empty())
}

/// Whether the request carries the panel's header (`X-Slipway-Panel: 1`).
pub(crate) fn has_panel_header(headers: &HeaderMap) -> bool {
    headers.get(HEADER).is_some_and(|v| v.as_bytes() == b"1")
}

/// Whether a method only reads.
pub(crate) fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn over_https(request: &Request) -> bool {
    request.extensions().get::<Https>().is_some()
        || request.uri().scheme_str() == Some("https")
        || request
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn set_cookie(value: &str, secure: bool, clear: bool) -> HeaderValue {
    let mut cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
    if clear {
        cookie.push_str("; Max-Age=0");
    }
    if secure {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).expect("an encoded cookie is a valid header value")
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::ReadOnly => "read-only",
        Scope::ReadWrite => "read-write",
    }
}

/// Whether the panel is signed in, and with what scope.
async fn session(AxumState(state): AxumState<Arc<State>>, request: Request) -> Response {
    let Some(token) = cookie_token(request.headers()) else {
        return axum::Json(json!({"signed_in": false})).into_response();
    };
    match state.auth.scope(&token).await {
        Some(scope) => {
            axum::Json(json!({"signed_in": true, "scope": scope_name(scope)})).into_response()
        }
        None => (
            [(
                header::SET_COOKIE,
                set_cookie("", over_https(&request), true),
            )],
            axum::Json(json!({
                "signed_in": false,
                "message": "the token this browser signed in with is no longer valid (or was revoked)",
            })),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// Checks a token as the API does and, when it is valid, keeps it in the cookie.
async fn sign_in(AxumState(state): AxumState<Arc<State>>, request: Request) -> Response {
    if !has_panel_header(request.headers()) {
        return missing_header().into_response();
    }
    let secure = over_https(&request);
    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return ApiError::bad_request("the sign-in body is too large").into_response(),
    };
    let Ok(SignIn { token }) = serde_json::from_slice::<SignIn>(&body) else {
        return ApiError::bad_request("the sign-in body must be {\"token\": \"...\"}")
            .into_response();
    };
    let token = token.trim();
    if token.is_empty() {
        return ApiError::bad_request("enter an API token").into_response();
    }
    match state.auth.scope(token).await {
        None => ApiError::unauthorized("the token is not valid (or was revoked)").into_response(),
        Some(scope) => (
            [(
                header::SET_COOKIE,
                set_cookie(&encode(token), secure, false),
            )],
            axum::Json(json!({"signed_in": true, "scope": scope_name(scope)})),
        )
            .into_response(),
    }
}

/// Clears the cookie.
async fn sign_out(request: Request) -> Response {
    if !has_panel_header(request.headers()) {
        return missing_header().into_response();
    }
    (
        [(
            header::SET_COOKIE,
            set_cookie("", over_https(&request), true),
        )],
        axum::Json(json!({"signed_in": false})),
    )
        .into_response()
}

pub(crate) fn missing_header() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "a request signed in by the panel's cookie that changes something must carry the header X-Slipway-Panel: 1",
    )
}

/// Percent-encodes every byte but the unreserved ones, so that any token fits in a cookie.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_the_cookie() {
        for t in [
            "slw_abc123",
            "0123abcdef",
            "with space;and=odd\"chars%",
            "ünï",
        ] {
            assert_eq!(decode(&encode(t)), t);
            assert!(
                encode(t)
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b))
            );
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; slipway_token=x%3By"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie_token(&h).as_deref(), Some("x;y"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("slipway_token="));
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let v = set_cookie("t", true, false);
        let v = v.to_str().unwrap();
        assert!(v.contains("HttpOnly") && v.contains("SameSite=Strict") && v.contains("Secure"));
        let v = set_cookie("", false, true);
        assert!(v.to_str().unwrap().contains("Max-Age=0"));
        assert!(!v.to_str().unwrap().contains("Secure"));
    }
}
