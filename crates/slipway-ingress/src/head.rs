//! The one set of rules every request head meets before the ingress does anything with it,
//! whichever path then serves it: a head that two HTTP parsers could read two ways (where
//! its body ends, which header it has) is refused with 400, so that no instance can be sent a
//! request that it and the ingress frame differently (request smuggling).
//!
//! Strict RFC 9112 for the head:
//! - every line ends with CRLF (a bare LF or CR is refused), at most
//!   [`MAX_HEAD_BYTES`] in all and [`MAX_HEADERS`] header lines (431 past either);
//! - the request line is `method SP request-target SP HTTP/1.1` (or `HTTP/1.0`), single
//!   spaces, a token for the method, visible ASCII for the target, in origin form (`/...`),
//!   absolute form (`http://...`, `https://...`) or `*` for `OPTIONS`;
//! - a header line is `name ":" OWS value OWS` with a token for the name (no whitespace
//!   before the colon) and no control character but HTAB in the value; a line that starts
//!   with whitespace (obs-fold) is refused;
//! - at most one `Content-Length`, digits only; at most one `Transfer-Encoding`, exactly
//!   `chunked`, never with `Content-Length`, never in HTTP/1.0; exactly one `Host` in
//!   HTTP/1.1 (at most one in HTTP/1.0), with the characters of a host and port only.
//!
//! The HTTP/2 connection preface is let through: HTTP/2 frames its messages itself.

use http::StatusCode;

/// The most bytes a request head may have.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header lines a request may have.
pub(crate) const MAX_HEADERS: usize = 100;
/// What an HTTP/2 client with prior knowledge sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the start of a client connection's input holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// Not yet a whole head, and nothing wrong so far.
    Partial,
    /// The HTTP/2 connection preface.
    Http2,
    /// A request head that meets the rules.
    Valid(Request),
}

/// What a valid head says of its request's extent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// The head's length.
    pub(crate) len: usize,
    pub(crate) body: Body,
    /// The connection ends with this request, or stops being HTTP/1 after it: HTTP/1.0, an
    /// `Upgrade`, or `Connection: close`.
    pub(crate) last: bool,
}

/// How a request's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A head refused, with the status and the reason given to the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) why: &'static str,
}

fn bad(why: &'static str) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        why,
    }
}

fn too_large(why: &'static str) -> Refused {
    Refused {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        why,
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 `field-vchar`, SP or HTAB.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// The characters of a host and its port, as `Host` may carry them.
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b)
}

/// Checks the request head at the start of `input` against the rules above.
pub(crate) fn check(input: &[u8]) -> Result<Head, Refused> {
    let mut pos = 0;
    // Empty lines before the request line are ignored (RFC 9112 §2.2).
    loop {
        match &input[pos..] {
            [b'\r', b'\n', ..] => pos += 2,
            [b'\r'] | [] => return Ok(Head::Partial),
            _ => break,
        }
    }
    let rest = &input[pos..];
    if pos == 0 {
        if rest.starts_with(PREFACE) {
            return Ok(Head::Http2);
        }
        if PREFACE.starts_with(rest) {
            return Ok(Head::Partial);
        }
    }
    let mut request_line: Option<Version> = None;
    let mut facts = Facts::default();
    let mut headers = 0;
    loop {
        let Some(lf) = input[pos..].iter().position(|&b| b == b'\n') else {
            // A line still to come: what there is of it may already be wrong.
            let line = &input[pos..];
            if let Some(cr) = line.iter().position(|&b| b == b'\r')
                && cr + 1 < line.len()
            {
                return Err(bad("a line has a CR that does not end it"));
            }
            if input.len() >= MAX_HEAD_BYTES {
                return Err(too_large("the request head is too long"));
            }
            return Ok(Head::Partial);
        };
        let end = pos + lf + 1;
        if end > MAX_HEAD_BYTES {
            return Err(too_large("the request head is too long"));
        }
        let Some(line) = input[pos..pos + lf].strip_suffix(b"\r") else {
            return Err(bad("a line ends with a bare LF"));
        };
        pos = end;
        let Some(version) = request_line else {
            request_line = Some(check_request_line(line)?);
            continue;
        };
        if line.is_empty() {
            facts.finish(version)?;
            return Ok(Head::Valid(Request {
                len: pos,
                body: match (facts.transfer_encoding, facts.length) {
                    (1, _) => Body::Chunked,
                    (_, Some(l)) => Body::Length(l),
                    _ => Body::None,
                },
                last: version == Version::Http10 || facts.upgrade || facts.close,
            }));
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(too_large("the request has too many header lines"));
        }
        check_header(line, &mut facts)?;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Http10,
    Http11,
}

fn check_request_line(line: &[u8]) -> Result<Version, Refused> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "the request line is not `method target version` with single spaces",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(bad("the request method is not a token"));
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(bad("the request target has a character it may not have"));
    }
    let lower = target.to_ascii_lowercase();
    let form_ok = target[0] == b'/'
        || (target == b"*" && method == b"OPTIONS")
        || ((lower.starts_with(b"http://") && lower.len() > 7)
            || (lower.starts_with(b"https://") && lower.len() > 8));
    if !form_ok {
        return Err(bad(
            "the request target is not a path, an http(s) URL, or `*` for OPTIONS",
        ));
    }
    match version {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        _ => Err(bad("the HTTP version is not HTTP/1.1 or HTTP/1.0")),
    }
}

/// What the header lines said about the message's framing and host.
#[derive(Debug, Default)]
struct Facts {
    content_length: usize,
    length: Option<u64>,
    transfer_encoding: usize,
    host: usize,
    upgrade: bool,
    close: bool,
}

impl Facts {
    fn finish(&self, version: Version) -> Result<(), Refused> {
        if self.transfer_encoding > 0 && self.content_length > 0 {
            return Err(bad(
                "the request has both Transfer-Encoding and Content-Length",
            ));
        }
        if self.transfer_encoding > 0 && version == Version::Http10 {
            return Err(bad("an HTTP/1.0 request has Transfer-Encoding"));
        }
        match (version, self.host) {
            (Version::Http11, 0) => Err(bad("an HTTP/1.1 request has no Host")),
            (_, 2..) => Err(bad("the request has more than one Host")),
            _ => Ok(()),
        }
    }
}

fn check_header(line: &[u8], facts: &mut Facts) -> Result<(), Refused> {
    if line[0] == b' ' || line[0] == b'\t' {
        return Err(bad("a header line is folded (obs-fold)"));
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(bad("a header line has no colon"));
    };
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(bad("a header name is not a token"));
    }
    let value = line[colon + 1..].trim_ascii();
    if !value.iter().all(|&b| is_value_byte(b)) {
        return Err(bad("a header value has a control character"));
    }
    if name.eq_ignore_ascii_case(b"content-length") {
        facts.content_length += 1;
        if facts.content_length > 1 {
            return Err(bad("the request has more than one Content-Length"));
        }
        if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
            return Err(bad("the Content-Length is not a number"));
        }
        facts.length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        facts.transfer_encoding += 1;
        if facts.transfer_encoding > 1 {
            return Err(bad("the request has more than one Transfer-Encoding"));
        }
        if !value.eq_ignore_ascii_case(b"chunked") {
            return Err(bad("the Transfer-Encoding is not `chunked`"));
        }
    } else if name.eq_ignore_ascii_case(b"upgrade") {
        facts.upgrade = true;
    } else if name.eq_ignore_ascii_case(b"connection") {
        facts.close |= value
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
    } else if name.eq_ignore_ascii_case(b"host") {
        facts.host += 1;
        if !value.iter().all(|&b| is_host_byte(b)) {
            return Err(bad("the Host is not a host and port"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(head: &str) -> bool {
        matches!(check(head.as_bytes()), Ok(Head::Valid(r)) if r.len == head.len())
    }

    #[test]
    fn plain_requests_pass_and_partial_ones_wait() {
        assert!(valid("GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n"));
        assert!(valid(
            "\r\nGET /x?y HTTP/1.1\r\nHost: a.localhost:80\r\nX: \t vé \r\n\r\n"
        ));
        assert!(valid("GET / HTTP/1.0\r\n\r\n"));
        assert!(valid("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(valid(
            "POST http://a/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
        ));
        assert_eq!(check(b"GET / HTTP/1.1\r\nHost: a\r"), Ok(Head::Partial));
        assert_eq!(check(b"PRI * HTTP/2.0\r\n"), Ok(Head::Partial));
        assert_eq!(check(PREFACE), Ok(Head::Http2));
        let post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(
            check(post),
            Ok(Head::Valid(Request {
                len: post.len(),
                body: Body::Length(12),
                last: false
            }))
        );
        let Ok(Head::Valid(r)) =
            check(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x, close\r\n\r\n")
        else {
            panic!("not valid")
        };
        assert!(r.last);
    }

    #[test]
    fn ambiguous_heads_are_refused_even_before_they_are_whole() {
        for head in [
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\rY: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n Y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nX: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        ] {
            assert_eq!(
                check(head.as_bytes()).map_err(|r| r.status),
                Err(StatusCode::BAD_REQUEST),
                "{head:?}"
            );
        }
        assert!(check(b"GET / HTTP/1.1\nHo").is_err());
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            check(long.as_bytes()).map_err(|r| r.status),
            Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }
}
