//! Which credential the fetcher may present to which remote.
//!
//! The operator's credentials are scoped: each names the host it is for (`host` means that
//! host on the scheme's default port, 443 or 22; `host:port` that port only), and a token
//! optionally a path prefix on it (`git.example.com/team` covers `/team/...` and nothing
//! else). A credential is offered only when the remote asks for one (HTTP 401, SSH
//! authentication), and only when the URL it asks from — after any redirect, since libgit2
//! hands the callback the URL of the server that asks — lies in its scope:
//!
//! - tokens only over `https://`, never over plain `http://`;
//! - SSH keys only to the hosts they name; the SSH agent is never offered;
//! - an app's own `SLIPWAY_GIT_TOKEN` only to the host and port of the app's own
//!   `repo_clone_url`, and only over `https://`;
//! - nothing else: no Negotiate/NTLM default credentials of the daemon's user.
//!
//! Once a credential has been handed to a host, a TLS connection to any other host in the
//! same fetch is refused before a byte is sent (libgit2 would otherwise replay the credential
//! to a redirect target that answers with a challenge of its own).

use std::path::{Path, PathBuf};

use slipway_spec::remote::{Remote, RemoteKind, default_port, parse_remote};

use crate::SourceError;

/// The flag that gives the daemon a token for HTTPS remotes.
pub const TOKEN_FLAG: &str = "--git-credential";
/// The flag that gives the daemon an SSH key.
pub const SSH_KEY_FLAG: &str = "--git-ssh-key";

/// Where a credential may be sent: a host, its port, and a path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    host: String,
    /// `None`: the scheme's default port.
    port: Option<u16>,
    /// Path segments the remote's path must start with.
    path: Vec<String>,
}

impl Scope {
    /// Reads `HOST[:PORT][/PATH-PREFIX]`.
    pub fn parse(text: &str) -> Result<Scope, SourceError> {
        let invalid = |reason: &str| SourceError::InvalidScope {
            scope: text.to_string(),
            reason: reason.to_string(),
        };
        let text_trimmed = text.trim();
        if text_trimmed.contains("://") {
            return Err(invalid(
                "give the host without a scheme (tokens are only ever sent over https://)",
            ));
        }
        let (authority, path) = match text_trimmed.split_once('/') {
            Some((a, p)) => (a, p),
            None => (text_trimmed, ""),
        };
        let remote = parse_remote(&format!("https://{authority}/"));
        let (Some(host), RemoteKind::Https) = (remote.host, remote.kind) else {
            return Err(invalid("expected HOST[:PORT][/PATH-PREFIX]"));
        };
        let port = if authority.ends_with(']') || !authority.contains(':') {
            None
        } else {
            remote.port
        };
        let path = segments(path).ok_or_else(|| {
            invalid("the path prefix must not contain `.`, `..` or percent-encoded segments")
        })?;
        Ok(Scope { host, port, path })
    }

    /// Whether a remote lies in this scope.
    fn covers(&self, remote: &Remote) -> bool {
        let (Some(host), Some(port)) = (&remote.host, remote.port) else {
            return false;
        };
        let wanted_port = self.port.or_else(|| default_port(remote.kind));
        if *host != self.host || Some(port) != wanted_port {
            return false;
        }
        if self.path.is_empty() {
            return true;
        }
        // A path that could climb out of the prefix once the server normalizes it is never
        // taken to be inside it.
        match segments(&remote.path) {
            Some(p) => p.starts_with(&self.path),
            None => false,
        }
    }

    fn specificity(&self) -> usize {
        self.path.len()
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for s in &self.path {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// A path's segments, without empty ones; `None` when one is `.`, `..` or percent-encoded.
fn segments(path: &str) -> Option<Vec<String>> {
    let path = path.trim_end_matches(".git");
    let mut out = Vec::new();
    for s in path.split('/').filter(|s| !s.is_empty()) {
        if s == "." || s == ".." || s.contains('%') {
            return None;
        }
        out.push(s.to_string());
    }
    Some(out)
}

/// The operator's credentials, each with its scope.
#[derive(Clone, Default)]
pub struct GitCredentials {
    tokens: Vec<(Scope, String)>,
    ssh_keys: Vec<(Scope, PathBuf)>,
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentials")
            .field(
                "tokens",
                &self
                    .tokens
                    .iter()
                    .map(|(s, _)| format!("{s}=[secret]"))
                    .collect::<Vec<_>>(),
            )
            .field("ssh_keys", &self.ssh_keys)
            .finish()
    }
}

impl GitCredentials {
    /// A token for `https://` remotes in `scope` (`HOST[:PORT][/PATH-PREFIX]`).
    pub fn add_token(&mut self, scope: &str, token: impl Into<String>) -> Result<(), SourceError> {
        let token = token.into();
        if token.trim().is_empty() {
            return Err(SourceError::InvalidScope {
                scope: scope.to_string(),
                reason: "the token is empty".into(),
            });
        }
        self.tokens
            .push((Scope::parse(scope)?, token.trim().to_string()));
        Ok(())
    }

    /// A private key for SSH remotes on `host` (`HOST[:PORT]`).
    pub fn add_ssh_key(&mut self, host: &str, key: impl Into<PathBuf>) -> Result<(), SourceError> {
        let scope = Scope::parse(host)?;
        if !scope.path.is_empty() {
            return Err(SourceError::InvalidScope {
                scope: host.to_string(),
                reason: "an SSH key is scoped to a host (HOST[:PORT]), not a path".into(),
            });
        }
        self.ssh_keys.push((scope, key.into()));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.ssh_keys.is_empty()
    }

    /// The token whose scope covers an `https://` remote, the longest path prefix first.
    fn token_for(&self, remote: &Remote) -> Option<(&Scope, &str)> {
        if remote.kind != RemoteKind::Https {
            return None;
        }
        self.tokens
            .iter()
            .filter(|(s, _)| s.covers(remote))
            .max_by_key(|(s, _)| s.specificity())
            .map(|(s, t)| (s, t.as_str()))
    }

    fn ssh_key_for(&self, remote: &Remote) -> Option<&Path> {
        if remote.kind != RemoteKind::Ssh {
            return None;
        }
        self.ssh_keys
            .iter()
            .find(|(s, _)| s.covers(remote))
            .map(|(_, k)| k.as_path())
    }
}

/// What an app itself gives for fetching its own repository.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The app's `SLIPWAY_GIT_TOKEN`: sent as the password (with the URL's user name, else
    /// `x-access-token`, which GitHub, GitLab and Gitea accept), only over `https://` to the
    /// host and port of the app's own `repo_clone_url`.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "[secret]"))
            .finish()
    }
}

/// What to answer a remote that asks for credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Offer {
    /// A token as the password over HTTPS; `origin` is the host it goes to.
    Token {
        user: String,
        token: String,
        origin: String,
        from: String,
    },
    SshKey {
        user: String,
        key: PathBuf,
        origin: String,
    },
    /// Only a user name (SSH asks for it before the key).
    Username(String),
    /// Nothing; the message says why and what to configure.
    Refuse(String),
}

impl Offer {
    /// For a credential: the host it goes to, and where it comes from.
    pub(crate) fn given(&self) -> Option<(String, String)> {
        match self {
            Offer::Token { origin, from, .. } => Some((origin.clone(), from.clone())),
            Offer::SshKey { origin, key, .. } => Some((
                origin.clone(),
                format!("{SSH_KEY_FLAG} {origin}={}", key.display()),
            )),
            Offer::Username(_) | Offer::Refuse(_) => None,
        }
    }
}

/// Decides what to offer `asking` (the URL of the server that asks, as libgit2 gives it) for
/// a fetch of `own` (the app's `repo_clone_url`). Pure: tested without a network.
pub(crate) fn decide(
    asking: &str,
    own: &Remote,
    username: Option<&str>,
    allowed: git2::CredentialType,
    operator: &GitCredentials,
    app: &Credentials,
) -> Offer {
    use git2::CredentialType as T;
    let remote = parse_remote(asking);
    let authority = remote
        .authority()
        .unwrap_or_else(|| "an unrecognised host".to_string());
    if allowed.contains(T::SSH_KEY) {
        if remote.kind != RemoteKind::Ssh {
            return Offer::Refuse(format!(
                "{authority} asks for an SSH key on a connection that is not SSH"
            ));
        }
        let user = username.or(remote.user.as_deref()).unwrap_or("git");
        return match operator.ssh_key_for(&remote) {
            Some(key) => Offer::SshKey {
                user: user.to_string(),
                key: key.to_path_buf(),
                origin: authority,
            },
            None => Offer::Refuse(format!(
                "{authority} asks for an SSH key and none is configured for it: give the daemon one with {SSH_KEY_FLAG} {authority}=FILE"
            )),
        };
    }
    if allowed.contains(T::USER_PASS_PLAINTEXT) {
        match remote.kind {
            RemoteKind::Https => {}
            RemoteKind::Http => {
                return Offer::Refuse(format!(
                    "{authority} asks for credentials over plain http://, where they would cross the network in clear text; credentials are only sent over https://"
                ));
            }
            _ => {
                return Offer::Refuse(format!(
                    "{authority} asks for a password on a connection that is not https://"
                ));
            }
        }
        let user = username
            .or(remote.user.as_deref())
            .unwrap_or("x-access-token")
            .to_string();
        if let Some(token) = &app.token
            && own.kind == RemoteKind::Https
            && own.host.is_some()
            && own.host == remote.host
            && own.port == remote.port
        {
            return Offer::Token {
                user,
                token: token.clone(),
                origin: authority,
                from: "the app's SLIPWAY_GIT_TOKEN".into(),
            };
        }
        if let Some((scope, token)) = operator.token_for(&remote) {
            return Offer::Token {
                user,
                token: token.to_string(),
                origin: authority,
                from: format!("{TOKEN_FLAG} {scope}"),
            };
        }
        let mut message = format!(
            "{authority} asks for credentials and none is configured for {authority}{}: give the daemon a token for it with {TOKEN_FLAG} {authority}[/PATH-PREFIX]=FILE",
            remote.path.trim_end_matches('/')
        );
        if app.token.is_some() {
            message.push_str(&format!(
                " (the app's SLIPWAY_GIT_TOKEN is only sent to {} over https://)",
                own.authority()
                    .unwrap_or_else(|| "the host of its own repository".into())
            ));
        } else {
            message.push_str(", or set the app's SLIPWAY_GIT_TOKEN env (type SECRET)");
        }
        return Offer::Refuse(message);
    }
    if allowed.contains(T::USERNAME) && remote.kind == RemoteKind::Ssh {
        return Offer::Username(
            username
                .or(remote.user.as_deref())
                .unwrap_or("git")
                .to_string(),
        );
    }
    Offer::Refuse(format!(
        "{authority} asks for credentials of a kind Slipway does not offer (it offers tokens over https:// and SSH keys)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::CredentialType as T;

    fn operator() -> GitCredentials {
        let mut c = GitCredentials::default();
        c.add_token("git.example.com/team", "team-token").unwrap();
        c.add_token("git.example.com/team/special", "special-token")
            .unwrap();
        c.add_token("localhost:8443", "local-token").unwrap();
        c.add_ssh_key("github.com", "/keys/github").unwrap();
        c
    }

    fn offer(asking: &str, own: &str, allowed: T, app: Option<&str>) -> Offer {
        decide(
            asking,
            &parse_remote(own),
            None,
            allowed,
            &operator(),
            &Credentials {
                token: app.map(Into::into),
            },
        )
    }

    fn token_of(o: &Offer) -> Option<&str> {
        match o {
            Offer::Token { token, .. } => Some(token),
            _ => None,
        }
    }

    #[test]
    fn a_token_goes_only_to_its_scope_over_https() {
        let own = "https://git.example.com/team/app.git";
        let up = T::USER_PASS_PLAINTEXT;
        assert_eq!(token_of(&offer(own, own, up, None)), Some("team-token"));
        let special = "https://git.example.com/team/special/app.git";
        assert_eq!(
            token_of(&offer(special, special, up, None)),
            Some("special-token")
        );
        for outside in [
            "https://git.example.com/teamster/app.git",
            "https://git.example.com/other/app.git",
            "https://git.example.com/team/../other/app.git",
            "https://git.example.com/team/%2e%2e/other/app.git",
            "https://git.example.com:444/team/app.git",
            "https://evil.example.com/team/app.git",
            "http://git.example.com/team/app.git",
            "https://localhost/x.git",
            "http://localhost:8443/x.git",
        ] {
            let o = offer(outside, outside, up, None);
            assert!(matches!(o, Offer::Refuse(_)), "{outside}: {o:?}");
        }
        assert_eq!(
            token_of(&offer(
                "https://localhost:8443/x.git",
                "https://localhost:8443/x.git",
                up,
                None
            )),
            Some("local-token")
        );
        let Offer::Refuse(m) = offer(
            "http://127.0.0.1:9/x.git",
            "http://127.0.0.1:9/x.git",
            up,
            None,
        ) else {
            panic!()
        };
        assert!(m.contains("plain http://"), "{m}");
        let Offer::Refuse(m) = offer(
            "https://other.org/x.git",
            "https://other.org/x.git",
            up,
            None,
        ) else {
            panic!()
        };
        assert!(
            m.contains("other.org") && m.contains("--git-credential other.org"),
            "{m}"
        );
    }

    #[test]
    fn the_apps_own_token_goes_only_to_its_own_host_over_https() {
        let up = T::USER_PASS_PLAINTEXT;
        let own = "https://code.example.org/me/app.git";
        assert_eq!(token_of(&offer(own, own, up, Some("mine"))), Some("mine"));
        // Redirected elsewhere: not the app's host.
        let o = offer("https://elsewhere.org/me/app.git", own, up, Some("mine"));
        assert!(matches!(o, Offer::Refuse(_)), "{o:?}");
        let o = offer(
            "https://code.example.org:8443/me/app.git",
            own,
            up,
            Some("mine"),
        );
        assert!(matches!(o, Offer::Refuse(_)), "{o:?}");
        let plain = "http://code.example.org/me/app.git";
        let o = offer(plain, plain, up, Some("mine"));
        assert!(matches!(o, Offer::Refuse(_)), "{o:?}");
    }

    #[test]
    fn ssh_keys_go_only_to_their_hosts_and_nothing_else_is_offered() {
        let o = offer(
            "git@github.com:acme/app.git",
            "git@github.com:acme/app.git",
            T::SSH_KEY,
            None,
        );
        assert_eq!(
            o,
            Offer::SshKey {
                user: "git".into(),
                key: "/keys/github".into(),
                origin: "github.com".into()
            }
        );
        let other = "ssh://git@evil.example.com/acme/app.git";
        let Offer::Refuse(m) = offer(other, other, T::SSH_KEY, None) else {
            panic!()
        };
        assert!(m.contains("--git-ssh-key evil.example.com=FILE"), "{m}");
        let o = offer(
            "https://git.example.com/team/app.git",
            "https://git.example.com/team/app.git",
            T::DEFAULT,
            None,
        );
        assert!(matches!(o, Offer::Refuse(_)), "{o:?}");
    }

    #[test]
    fn scopes_are_read_strictly() {
        for bad in [
            "https://github.com",
            "",
            "git hub.com",
            "host/../x",
            "host:99999",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Scope::parse("Git.Example.com:8443/team/")
                .unwrap()
                .to_string(),
            "git.example.com:8443/team"
        );
        let mut c = GitCredentials::default();
        assert!(c.add_ssh_key("github.com/acme", "/k").is_err());
        assert!(c.add_token("github.com", "  ").is_err());
        assert!(!format!("{:?}", operator()).contains("team-token"));
    }
}
