//! Where a `repo_clone_url` points, read the way git's transports read it (libgit2 picks a
//! transport by the URL's prefix; a URL with a `:` and no known prefix is scp-style SSH; what
//! is left is a path on this machine's disk). No I/O: nothing is resolved or checked to exist.

/// The transport a repository URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    /// A path on the machine the fetcher runs on, or a `file://` URL.
    Local,
    /// `http://`: plain text, no credential is ever sent over it.
    Http,
    /// `https://`.
    Https,
    /// `ssh://`, `ssh+git://`, `git+ssh://`, or scp-style `[user@]host:path`.
    Ssh,
    /// `git://`: git's own protocol, without authentication.
    Git,
    /// A URL whose scheme git does not know, or whose host cannot be read unambiguously.
    Unknown,
}

/// A repository URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub kind: RemoteKind,
    /// The host, lower-cased (an IPv6 address without its brackets); `None` for local and
    /// unknown remotes.
    pub host: Option<String>,
    /// The port, the scheme's default when the URL gives none.
    pub port: Option<u16>,
    /// The path on the host (with its leading `/` for URLs; as written for scp-style).
    pub path: String,
    /// The user name the URL gives, if any.
    pub user: Option<String>,
}

impl Remote {
    fn unknown(path: &str) -> Remote {
        Remote {
            kind: RemoteKind::Unknown,
            host: None,
            port: None,
            path: path.to_string(),
            user: None,
        }
    }

    /// `host` or `host:port`, the port only when it is not the scheme's default; IPv6
    /// addresses in brackets.
    pub fn authority(&self) -> Option<String> {
        let host = self.host.as_deref()?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match (self.port, default_port(self.kind)) {
            (Some(p), Some(d)) if p != d => Some(format!("{host}:{p}")),
            _ => Some(host),
        }
    }
}

/// The port a scheme uses when its URL names none.
pub fn default_port(kind: RemoteKind) -> Option<u16> {
    match kind {
        RemoteKind::Http => Some(80),
        RemoteKind::Https => Some(443),
        RemoteKind::Ssh => Some(22),
        RemoteKind::Git => Some(9418),
        RemoteKind::Local | RemoteKind::Unknown => None,
    }
}

/// Reads a repository URL. Host names are accepted only when they are unambiguous (letters,
/// digits, `.`, `-`, `_`, or an IPv6 address in brackets); anything else is
/// [`RemoteKind::Unknown`], to which no credential is ever matched.
pub fn parse_remote(url: &str) -> Remote {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("file:") {
        return Remote {
            kind: RemoteKind::Local,
            host: None,
            port: None,
            path: url.to_string(),
            user: None,
        };
    }
    if let Some(at) = lower.find("://") {
        let kind = match &lower[..at] {
            "https" => RemoteKind::Https,
            "http" => RemoteKind::Http,
            "ssh" | "ssh+git" | "git+ssh" => RemoteKind::Ssh,
            "git" => RemoteKind::Git,
            _ => return Remote::unknown(url),
        };
        return parse_standard(kind, &url[at + 3..]).unwrap_or_else(|| Remote::unknown(url));
    }
    match url.find(':') {
        // scp-style `[user@]host:path`; a `/` before the `:` makes it a path.
        Some(colon) if !url[..colon].contains('/') => {
            parse_scp(&url[..colon], &url[colon + 1..]).unwrap_or_else(|| Remote::unknown(url))
        }
        _ => Remote {
            kind: RemoteKind::Local,
            host: None,
            port: None,
            path: url.to_string(),
            user: None,
        },
    }
}

fn parse_standard(kind: RemoteKind, rest: &str) -> Option<Remote> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // A backslash, a space or a control character in the authority is read differently by
    // different URL parsers: no host is trusted from such a URL.
    if authority
        .chars()
        .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    {
        return None;
    }
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    // Credentials embedded in the URL are the URL's own business; only the user name is kept.
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let user = userinfo.map(|u| u.split(':').next().unwrap_or("").to_string());
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let close = inner.find(']')?;
        let host = &inner[..close];
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return None;
        }
        let after = &inner[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        (host.to_string(), port)
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        if !plain_host(host) {
            return None;
        }
        (host.to_string(), port)
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok()?,
        None => default_port(kind)?,
    };
    Some(Remote {
        kind,
        host: Some(host.to_ascii_lowercase()),
        port: Some(port),
        path: path.to_string(),
        user,
    })
}

fn parse_scp(authority: &str, path: &str) -> Option<Remote> {
    let (user, host) = match authority.split_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    if !plain_host(host) || user.as_deref().is_some_and(|u| u.contains('@')) {
        return None;
    }
    Some(Remote {
        kind: RemoteKind::Ssh,
        host: Some(host.to_ascii_lowercase()),
        port: default_port(RemoteKind::Ssh),
        path: path.to_string(),
        user,
    })
}

fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(url: &str) -> RemoteKind {
        parse_remote(url).kind
    }

    #[test]
    fn urls_are_read_as_git_reads_them() {
        for local in [
            "/srv/repo.git",
            "repo",
            "./repo",
            "../../etc",
            "~/repo",
            "file:///srv/repo.git",
            "FILE:///srv/repo.git",
            "file://localhost/srv/repo",
            "/tmp/a:b",
            "",
        ] {
            assert_eq!(kind(local), RemoteKind::Local, "{local}");
        }
        let r = parse_remote("https://user:secret@Git.Example.com:8443/team/app.git?x=1");
        assert_eq!(r.kind, RemoteKind::Https);
        assert_eq!(r.host.as_deref(), Some("git.example.com"));
        assert_eq!(r.port, Some(8443));
        assert_eq!(r.path, "/team/app.git");
        assert_eq!(r.user.as_deref(), Some("user"));
        assert_eq!(r.authority().as_deref(), Some("git.example.com:8443"));
        let r = parse_remote("https://github.com/acme/shop.git");
        assert_eq!(
            (r.port, r.authority()),
            (Some(443), Some("github.com".into()))
        );
        let r = parse_remote("http://127.0.0.1:3000/a/b.git");
        assert_eq!(
            (r.kind, r.host.as_deref(), r.port),
            (RemoteKind::Http, Some("127.0.0.1"), Some(3000))
        );
        let r = parse_remote("git@github.com:acme/shop.git");
        assert_eq!(
            (
                r.kind,
                r.host.as_deref(),
                r.user.as_deref(),
                r.path.as_str()
            ),
            (
                RemoteKind::Ssh,
                Some("github.com"),
                Some("git"),
                "acme/shop.git"
            )
        );
        let r = parse_remote("ssh://git@[::1]:2222/srv/x.git");
        assert_eq!(
            (r.kind, r.host.as_deref(), r.port),
            (RemoteKind::Ssh, Some("::1"), Some(2222))
        );
        assert_eq!(r.authority().as_deref(), Some("[::1]:2222"));
        assert_eq!(kind("git://example.com/x.git"), RemoteKind::Git);
        for unknown in [
            "ftp://example.com/x",
            "https://exa mple.com/x",
            "https://example.com:99999/x",
            "https://evil.com\\@good.com/x",
            "a@b@host:x",
            "https://[zz]/x",
        ] {
            assert_eq!(kind(unknown), RemoteKind::Unknown, "{unknown}");
        }
    }
}
