//! What an app's spec asks of its traffic beyond picking a service: the hosts it is served
//! at (its domains), redirects, and CORS.
//!
//! CORS follows the Fetch standard as a proxy in front of an app applies it: a request whose
//! `Origin` the policy allows is answered with `Access-Control-Allow-Origin` naming that
//! origin (and the policy's other headers); a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) from an allowed origin is answered by the ingress itself.
//! A request from any other origin passes through untouched: the browser then refuses the
//! answer to the page, as it should.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use slipway_spec::{AppSpec, CorsPolicy, DomainSpec, RedirectSpec, StringMatch, routing};

use crate::table::Route;

/// A host an app is served at besides its default one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Domain {
    pub name: String,
    /// Every subdomain of `name` too.
    #[serde(default)]
    pub wildcard: bool,
    /// Its clients must speak TLS 1.3 (`minimum_tls_version: "1.3"`).
    #[serde(default)]
    pub tls13: bool,
}

impl Domain {
    /// Whether `host` (lower-case, without port) is this domain, or one of its subdomains
    /// when it is a wildcard.
    pub(crate) fn serves(&self, host: &str) -> bool {
        host == self.name
            || (self.wildcard
                && host
                    .strip_suffix(self.name.as_str())
                    .is_some_and(|rest| rest.ends_with('.')))
    }
}

impl From<&DomainSpec> for Domain {
    fn from(d: &DomainSpec) -> Domain {
        Domain {
            name: d.domain.to_ascii_lowercase(),
            wildcard: d.wildcard.unwrap_or(false),
            tls13: d.minimum_tls_version.as_deref() == Some("1.3"),
        }
    }
}

/// The spec's domains.
pub(crate) fn domains_of(spec: &AppSpec) -> Vec<Domain> {
    spec.domains.iter().map(Domain::from).collect()
}

/// The spec's routes, most specific first: `ingress.rules` when there are any, else the
/// services' `routes`, else every path to the first service.
pub(crate) fn routes_of(spec: &AppSpec) -> Vec<Route> {
    let rules = spec.ingress.as_ref().map_or(&[][..], |i| &i.rules[..]);
    let mut routes: Vec<Route> = if !rules.is_empty() {
        rules
            .iter()
            .filter_map(|r| {
                let matcher = r.matcher.as_ref();
                let prefix = matcher
                    .and_then(|m| m.path.as_ref())
                    .map_or_else(|| "/".to_string(), |p| p.prefix.clone());
                let authority = matcher
                    .and_then(|m| m.authority.as_ref())
                    .map(|a| a.exact.to_ascii_lowercase());
                let cors = r.cors.as_ref().map(Cors::new);
                if let Some(redirect) = &r.redirect {
                    return Some(Route {
                        prefix,
                        authority,
                        component: String::new(),
                        preserve_prefix: false,
                        rewrite: None,
                        redirect: Some(redirect.clone()),
                        cors,
                    });
                }
                let component = r.component.as_ref()?;
                Some(Route {
                    prefix,
                    authority,
                    component: component.name.clone(),
                    preserve_prefix: component.preserve_path_prefix.unwrap_or(false),
                    rewrite: component.rewrite.clone(),
                    redirect: None,
                    cors,
                })
            })
            .collect()
    } else {
        spec.services
            .iter()
            .flat_map(|s| {
                let cors = s.cors.as_ref().map(Cors::new);
                s.routes.iter().map(move |r| Route {
                    prefix: r.path.clone().unwrap_or_else(|| "/".into()),
                    authority: None,
                    component: s.name.clone(),
                    preserve_prefix: r.preserve_path_prefix.unwrap_or(false),
                    rewrite: None,
                    redirect: None,
                    cors: cors.clone(),
                })
            })
            .collect()
    };
    if routes.is_empty()
        && let Some(first) = spec.services.first()
    {
        routes.push(Route {
            prefix: "/".into(),
            authority: None,
            component: first.name.clone(),
            preserve_prefix: true,
            rewrite: None,
            redirect: None,
            cors: first.cors.as_ref().map(Cors::new),
        });
    }
    // The longest prefix first; for one prefix, the rule for a host before the rule for all.
    routes.sort_by_key(|r| (std::cmp::Reverse(r.prefix.len()), r.authority.is_none()));
    routes
}

/// Where a redirect sends a request: `scheme://authority[:port]uri`. What the redirect does
/// not give is the request's (its host, its path and query), but the scheme, which is
/// `https`; the request's port is kept only when neither the host nor the scheme changes.
pub(crate) fn location(
    redirect: &RedirectSpec,
    request_scheme: &str,
    request_host: &str,
    path_and_query: &str,
) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or("https");
    let (host, port) = split_host(request_host);
    let authority = redirect.authority.as_deref().unwrap_or(host);
    let port = match redirect.port {
        Some(p) => Some(p.to_string()),
        None if redirect.authority.is_none() && scheme == request_scheme => {
            port.map(str::to_string)
        }
        None => None,
    };
    let uri = redirect.uri.as_deref().unwrap_or(path_and_query);
    match port {
        Some(p) => format!("{scheme}://{authority}:{p}{uri}"),
        None => format!("{scheme}://{authority}{uri}"),
    }
}

/// The redirect's status (302 unless the spec says otherwise).
pub(crate) fn redirect_status(redirect: &RedirectSpec) -> StatusCode {
    redirect
        .redirect_code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::FOUND)
}

/// `host[:port]` split; IPv6 literals keep their brackets.
fn split_host(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => {
                let port = host[end + 1..].strip_prefix(':');
                (&host[..=end], port)
            }
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (host, None),
    }
}

/// A CORS policy, its origin matches compiled. Sent to an ingress process as the spec's
/// policy, and compiled again there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "CorsPolicy", into = "CorsPolicy")]
pub(crate) struct Cors(Arc<Compiled>);

#[derive(Debug)]
struct Compiled {
    policy: CorsPolicy,
    origins: Vec<OriginMatch>,
    /// The preflight's answer headers, which do not depend on the request but for its
    /// origin.
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

#[derive(Debug)]
enum OriginMatch {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
    /// A match the spec's validation would have refused: it matches nothing.
    Never,
}

impl PartialEq for Cors {
    fn eq(&self, other: &Cors) -> bool {
        self.0.policy == other.0.policy
    }
}

impl From<CorsPolicy> for Cors {
    fn from(policy: CorsPolicy) -> Cors {
        Cors::new(&policy)
    }
}

impl From<Cors> for CorsPolicy {
    fn from(c: Cors) -> CorsPolicy {
        c.0.policy.clone()
    }
}

fn joined(list: &[String]) -> Option<HeaderValue> {
    if list.is_empty() {
        return None;
    }
    HeaderValue::from_str(&list.join(", ")).ok()
}

impl Cors {
    pub(crate) fn new(policy: &CorsPolicy) -> Cors {
        let origins = policy
            .allow_origins
            .iter()
            .map(|m: &StringMatch| match (&m.exact, &m.prefix, &m.regex) {
                (Some(e), None, None) => OriginMatch::Exact(e.clone()),
                (None, Some(p), None) => OriginMatch::Prefix(p.clone()),
                (None, None, Some(r)) => regex::Regex::new(&routing::anchored(r))
                    .map_or(OriginMatch::Never, OriginMatch::Regex),
                _ => OriginMatch::Never,
            })
            .collect();
        let max_age = policy
            .max_age
            .as_deref()
            .and_then(routing::duration_seconds)
            .map(HeaderValue::from);
        Cors(Arc::new(Compiled {
            policy: policy.clone(),
            origins,
            allow_methods: joined(&policy.allow_methods),
            allow_headers: joined(&policy.allow_headers),
            expose_headers: joined(&policy.expose_headers),
            max_age,
        }))
    }

    /// Whether the policy lets `origin` read answers.
    pub(crate) fn allows(&self, origin: &str) -> bool {
        self.0.origins.iter().any(|m| match m {
            OriginMatch::Exact(e) => e == origin,
            OriginMatch::Prefix(p) => origin.starts_with(p.as_str()),
            OriginMatch::Regex(r) => r.is_match(origin),
            OriginMatch::Never => false,
        })
    }

    fn common(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.0.policy.allow_credentials == Some(true) {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // The answer depends on the origin: caches must keep one per origin.
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }

    /// The headers of the ingress's answer to a preflight from an allowed `origin`.
    pub(crate) fn preflight(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        self.common(origin, headers);
        let c = &self.0;
        for (name, value) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &c.allow_methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &c.allow_headers),
            (header::ACCESS_CONTROL_MAX_AGE, &c.max_age),
        ] {
            if let Some(v) = value {
                headers.insert(name, v.clone());
            }
        }
    }

    /// The headers added to an instance's answer to a request from an allowed `origin`.
    pub(crate) fn answer(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        self.common(origin, headers);
        if let Some(v) = &self.0.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Access-Control-Request-Method`.
pub(crate) fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_spec::parse_spec;

    /// A redirect from its JSON.
    fn redirect(json: &str) -> RedirectSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_redirect_keeps_what_it_does_not_give() {
        let r = redirect(r#"{"uri": "/new"}"#);
        assert_eq!(
            location(&r, "http", "shop.example.com:8080", "/old?q=1"),
            "https://shop.example.com/new",
            "to https by default, so not to the plain-HTTP port"
        );
        let r = redirect(r#"{"scheme": "http"}"#);
        assert_eq!(
            location(&r, "http", "shop.example.com:8080", "/old?q=1"),
            "http://shop.example.com:8080/old?q=1"
        );
        let r = redirect(r#"{"authority": "example.org", "port": 8443}"#);
        assert_eq!(
            location(&r, "http", "shop.example.com", "/a"),
            "https://example.org:8443/a"
        );
        let r = redirect(r#"{"scheme": "http", "authority": "example.org"}"#);
        assert_eq!(
            location(&r, "http", "shop.example.com:8080", "/a"),
            "http://example.org/a",
            "another host: not the request's port"
        );
        assert_eq!(
            location(
                &redirect(r#"{"port": 81, "scheme": "http"}"#),
                "http",
                "[::1]:80",
                "/"
            ),
            "http://[::1]:81/"
        );
        assert_eq!(redirect_status(&redirect("{}")), StatusCode::FOUND);
        assert_eq!(
            redirect_status(&redirect(r#"{"redirect_code": 308}"#)),
            StatusCode::PERMANENT_REDIRECT
        );
    }

    #[test]
    fn origins_match_exactly_by_prefix_or_by_a_whole_regex() {
        let cors = Cors::new(&CorsPolicy {
            allow_origins: vec![
                StringMatch {
                    exact: Some("https://shop.example.com".into()),
                    ..Default::default()
                },
                StringMatch {
                    prefix: Some("https://preview-".into()),
                    ..Default::default()
                },
                StringMatch {
                    regex: Some(r"https://[a-z]+\.example\.org".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        assert!(cors.allows("https://shop.example.com"));
        assert!(!cors.allows("https://shop.example.com.evil.net"));
        assert!(cors.allows("https://preview-42.example.net"));
        assert!(cors.allows("https://docs.example.org"));
        assert!(
            !cors.allows("https://docs.example.org.evil.net"),
            "a regex matches the whole origin"
        );
        assert!(!cors.allows("http://docs.example.org"));
    }

    #[test]
    fn routes_come_from_rules_else_from_the_services_routes_else_the_first_service() {
        let spec = parse_spec("name: shop\nservices:\n  - name: web\n    image: {repository: a}\n    routes: [{path: /}]\n  - name: api\n    image: {repository: a}\n    routes: [{path: /api, preserve_path_prefix: true}]\n    cors: {allow_origins: [{exact: \"https://a.example.com\"}]}\n").unwrap().spec;
        let routes = routes_of(&spec);
        assert_eq!(
            routes
                .iter()
                .map(|r| (r.prefix.as_str(), r.component.as_str(), r.cors.is_some()))
                .collect::<Vec<_>>(),
            [("/api", "api", true), ("/", "web", false)]
        );
        let spec = parse_spec("name: shop\nservices:\n  - name: web\n    image: {repository: a}\ningress:\n  rules:\n    - {match: {path: {prefix: /a}}, component: {name: web}}\n    - {match: {path: {prefix: /a}, authority: {exact: x.example.com}}, redirect: {uri: /b}}\n").unwrap().spec;
        let routes = routes_of(&spec);
        assert_eq!(routes[0].authority.as_deref(), Some("x.example.com"));
        assert!(routes[0].redirect.is_some());
        assert_eq!(routes[1].component, "web");
    }
}
