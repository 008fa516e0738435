//! The checks of what routes requests to an app: its domains, `ingress.rules` and the
//! services' older `routes`, with the helpers the ingress shares (durations, host names).

use crate::parse::Problem;
use crate::spec::{AppSpec, CorsPolicy, DomainType, REDIRECT_CODES, RedirectSpec, StringMatch};

/// Seconds in a duration as App Platform writes them (Go's form): numbers each with a unit of
/// `h`, `m`, `s` or `ms`, e.g. `24h`, `1h30m`, `90s`, `1.5h`. Fractions of a second are dropped.
pub fn duration_seconds(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut millis: f64 = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1.0, 2)
        } else if rest.starts_with('h') {
            (3_600_000.0, 1)
        } else if rest.starts_with('m') {
            (60_000.0, 1)
        } else if rest.starts_with('s') {
            (1000.0, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        millis += number * unit;
    }
    (millis.is_finite() && millis < 1e15).then(|| (millis / 1000.0) as u64)
}

/// Whether `host` is a DNS host name: dot-separated labels of lower-case letters, digits and
/// inner hyphens, each of 1 to 63 characters, 253 at most in all, with at least one dot.
pub fn is_host_name(host: &str) -> bool {
    host.len() <= 253
        && host.contains('.')
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            (1..=63).contains(&b.len())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Whether `host` is a host name (see [`is_host_name`]) or an IP address.
fn is_authority_host(host: &str) -> bool {
    is_host_name(host) || host.parse::<std::net::IpAddr>().is_ok()
}

/// A regex of an origin match, anchored: it must match the whole origin.
pub fn anchored(regex: &str) -> String {
    format!("^(?:{regex})$")
}

pub(crate) fn check(spec: &AppSpec, p: &mut Vec<Problem>) {
    check_domains(spec, p);
    let rules = spec.ingress.as_ref().map_or(&[][..], |i| &i.rules[..]);
    // The matches seen so far: (authority, prefix) and where.
    let mut seen: Vec<(Option<&str>, &str, String)> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("ingress.rules[{i}]");
        match (&rule.component, &rule.redirect) {
            (Some(c), None) => {
                if spec.service(&c.name).is_none() {
                    p.push(Problem::new(
                        format!("{path}.component.name"),
                        format!("\"{}\" is not a service of this app", c.name),
                    ));
                }
                if let Some(rewrite) = &c.rewrite {
                    if c.preserve_path_prefix == Some(true) {
                        p.push(Problem::new(
                            format!("{path}.component.rewrite"),
                            "cannot be given with preserve_path_prefix: true (a rewrite replaces the prefix)",
                        ));
                    }
                    if !rewrite.starts_with('/') {
                        p.push(Problem::new(
                            format!("{path}.component.rewrite"),
                            format!("\"{rewrite}\" must start with /"),
                        ));
                    }
                }
            }
            (None, Some(redirect)) => check_redirect(p, &format!("{path}.redirect"), redirect),
            (Some(_), Some(_)) => p.push(Problem::new(
                path.clone(),
                "a rule either routes to a `component` or answers with a `redirect`, not both",
            )),
            (None, None) => p.push(Problem::new(
                format!("{path}.component"),
                "a rule must name the service it routes to (or give a `redirect`)",
            )),
        }
        let matcher = rule.matcher.as_ref();
        let prefix = matcher
            .and_then(|m| m.path.as_ref())
            .map_or("/", |p| p.prefix.as_str());
        if !prefix.starts_with('/') {
            p.push(Problem::new(
                format!("{path}.match.path.prefix"),
                format!("\"{prefix}\" must start with /"),
            ));
        }
        let authority = matcher
            .and_then(|m| m.authority.as_ref())
            .map(|a| a.exact.as_str());
        if let Some(a) = authority
            && !is_authority_host(a)
        {
            p.push(Problem::new(
                format!("{path}.match.authority.exact"),
                format!("\"{a}\" must be a lower-case host name without a port, such as shop.example.com"),
            ));
        }
        if let Some((_, _, first)) = seen
            .iter()
            .find(|(a, pre, _)| *a == authority && *pre == prefix)
        {
            p.push(Problem::new(
                format!("{path}.match"),
                format!("matches the same requests as {first}: each path prefix (for each host) must be unique"),
            ));
        } else {
            seen.push((authority, prefix, path.clone()));
        }
        if let Some(cors) = &rule.cors {
            check_cors(p, &format!("{path}.cors"), cors);
        }
    }
    for (i, service) in spec.services.iter().enumerate() {
        let path = format!("services[{i}]");
        if !service.routes.is_empty() && !rules.is_empty() {
            p.push(Problem::new(
                format!("{path}.routes"),
                "cannot be used with ingress.rules: give this service's paths as rules there",
            ));
        }
        for (j, route) in service.routes.iter().enumerate() {
            let prefix = route.path.as_deref().unwrap_or("/");
            let at = format!("{path}.routes[{j}].path");
            if !prefix.starts_with('/') {
                p.push(Problem::new(
                    at.clone(),
                    format!("\"{prefix}\" must start with /"),
                ));
            }
            if let Some((_, _, first)) = seen.iter().find(|(_, pre, _)| *pre == prefix) {
                p.push(Problem::new(
                    at,
                    format!("\"{prefix}\" is routed by {first} already: paths must be unique across the app"),
                ));
            } else {
                seen.push((None, prefix, at));
            }
        }
        if let Some(cors) = &service.cors {
            check_cors(p, &format!("{path}.cors"), cors);
        }
    }
}

fn check_domains(spec: &AppSpec, p: &mut Vec<Problem>) {
    let mut primary: Option<usize> = None;
    for (i, d) in spec.domains.iter().enumerate() {
        let path = format!("domains[{i}]");
        if !is_host_name(&d.domain) {
            p.push(Problem::new(
                format!("{path}.domain"),
                format!(
                    "\"{}\" must be a lower-case host name such as shop.example.com (for its subdomains too, add `wildcard: true`)",
                    d.domain
                ),
            ));
        }
        if let Some(first) = spec.domains[..i].iter().position(|o| o.domain == d.domain) {
            p.push(Problem::new(
                format!("{path}.domain"),
                format!("\"{}\" is domains[{first}] already", d.domain),
            ));
        }
        if d.kind == Some(DomainType::Primary) {
            match primary {
                Some(first) => p.push(Problem::new(
                    format!("{path}.type"),
                    format!("only one domain may be PRIMARY, and domains[{first}] is"),
                )),
                None => primary = Some(i),
            }
        }
        if let Some(v) = &d.minimum_tls_version
            && v != "1.2"
            && v != "1.3"
        {
            p.push(Problem::new(
                format!("{path}.minimum_tls_version"),
                format!("\"{v}\" must be \"1.2\" or \"1.3\""),
            ));
        }
        if let Some(zone) = &d.zone
            && !(d.domain == *zone || d.domain.ends_with(&format!(".{zone}")))
        {
            p.push(Problem::new(
                format!("{path}.zone"),
                format!("\"{zone}\" must be {} or a domain it is under", d.domain),
            ));
        }
    }
}

fn check_redirect(p: &mut Vec<Problem>, path: &str, r: &RedirectSpec) {
    if r.uri.is_none() && r.authority.is_none() && r.port.is_none() && r.scheme.is_none() {
        p.push(Problem::new(
            path,
            "a redirect needs at least one of `uri`, `authority`, `port` or `scheme`",
        ));
    }
    if let Some(uri) = &r.uri
        && (!uri.starts_with('/') || uri.bytes().any(|b| b.is_ascii_control() || b == b' '))
    {
        p.push(Problem::new(
            format!("{path}.uri"),
            format!("\"{uri}\" must be a path (and query) starting with /, without spaces"),
        ));
    }
    if let Some(a) = &r.authority
        && !is_authority_host(a)
    {
        p.push(Problem::new(
            format!("{path}.authority"),
            format!("\"{a}\" must be a lower-case host name or IP address, without a port (give it in `port`)"),
        ));
    }
    if r.port == Some(0) {
        p.push(Problem::new(
            format!("{path}.port"),
            "must be a port from 1 to 65535",
        ));
    }
    if let Some(s) = &r.scheme
        && s != "http"
        && s != "https"
    {
        p.push(Problem::new(
            format!("{path}.scheme"),
            format!("\"{s}\" must be \"http\" or \"https\""),
        ));
    }
    if let Some(code) = r.redirect_code
        && !REDIRECT_CODES.contains(&code)
    {
        p.push(Problem::new(
            format!("{path}.redirect_code"),
            format!("{code} must be one of 300, 301, 302, 303, 304, 307, 308"),
        ));
    }
}

/// An HTTP token (a method or a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_cors(p: &mut Vec<Problem>, path: &str, c: &CorsPolicy) {
    for (i, m) in c.allow_origins.iter().enumerate() {
        check_origin(p, &format!("{path}.allow_origins[{i}]"), m);
    }
    for (field, list) in [
        ("allow_methods", &c.allow_methods),
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        for (i, v) in list.iter().enumerate() {
            if !(is_token(v) || (v == "*" && field != "allow_methods")) {
                p.push(Problem::new(
                    format!("{path}.{field}[{i}]"),
                    format!(
                        "\"{v}\" must be an HTTP {}",
                        if field == "allow_methods" {
                            "method, such as GET"
                        } else {
                            "header name"
                        }
                    ),
                ));
            }
        }
    }
    if let Some(age) = &c.max_age
        && duration_seconds(age).is_none()
    {
        p.push(Problem::new(
            format!("{path}.max_age"),
            format!("\"{age}\" must be a duration such as 24h, 30m, 1h30m or 600s"),
        ));
    }
}

fn check_origin(p: &mut Vec<Problem>, path: &str, m: &StringMatch) {
    let given = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        p.push(Problem::new(
            path,
            "give exactly one of `exact`, `prefix` or `regex`",
        ));
    }
    if let Some(r) = &m.regex
        && let Err(e) = regex::Regex::new(&anchored(r))
    {
        p.push(Problem::new(
            format!("{path}.regex"),
            format!(
                "\"{r}\" is not a valid regular expression: {}",
                e.to_string().lines().last().unwrap_or_default()
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_as_go_writes_them() {
        assert_eq!(duration_seconds("24h"), Some(86_400));
        assert_eq!(duration_seconds("1h30m"), Some(5_400));
        assert_eq!(duration_seconds("90s"), Some(90));
        assert_eq!(duration_seconds("1.5h"), Some(5_400));
        assert_eq!(duration_seconds("1500ms"), Some(1));
        assert_eq!(duration_seconds("5"), None);
        assert_eq!(duration_seconds("5d"), None);
        assert_eq!(duration_seconds(""), None);
    }

    #[test]
    fn host_names_are_lower_case_dns_names() {
        assert!(is_host_name("shop.example.com"));
        assert!(is_host_name("a-1.b.co"));
        assert!(!is_host_name("localhost"));
        assert!(!is_host_name("Shop.example.com"));
        assert!(!is_host_name("*.example.com"));
        assert!(!is_host_name("shop.example.com:8080"));
        assert!(!is_host_name("-a.example.com"));
        assert!(!is_host_name("a..com"));
    }
}
