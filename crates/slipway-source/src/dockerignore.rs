//! `.dockerignore`, with Docker's rules: patterns are matched against paths relative to the
//! context's root; `*` and `?` do not cross `/`, `**` matches any number of directories; a
//! pattern that matches a directory excludes everything below it; the last pattern that
//! matches decides, and a leading `!` makes it an exception. The Dockerfile and
//! `.dockerignore` are always sent, as Docker's client does.

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<String>,
    exception: bool,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let (exception, body) = match l.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, l),
                };
                let segments: Vec<String> = body
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .map(str::to_string)
                    .collect();
                (!segments.is_empty()).then_some(Pattern {
                    segments,
                    exception,
                })
            })
            .collect();
        DockerIgnore { patterns }
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for p in &self.patterns {
            // A pattern matches the path itself or any of its parent directories.
            let hit = (1..=parts.len()).any(|n| matches(&p.segments, &parts[..n]));
            if hit {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether anything below directory `dir` could be brought back by an exception, so that
    /// an excluded directory must still be walked.
    pub fn may_include_below(&self, dir: &str) -> bool {
        let parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            // The exception's leading segments could match the directory.
            let n = parts.len().min(p.segments.len());
            p.segments[..n].iter().any(|s| s == "**")
                || p.segments[..n]
                    .iter()
                    .zip(&parts[..n])
                    .all(|(pat, part)| glob(pat, part))
        })
    }
}

/// Matches path segments against pattern segments, `**` spanning any number of segments.
fn matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| matches(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((seg, path_rest)) => glob(first, seg) && matches(rest, path_rest),
            None => false,
        },
    }
}

/// One segment: `*` any run of characters, `?` one character, `[...]` a class, `\` escapes.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|i| glob_at(&p[1..], &t[i..])),
        Some('?') => !t.is_empty() && glob_at(&p[1..], &t[1..]),
        Some('[') => {
            let Some(end) = p.iter().position(|c| *c == ']') else {
                return t.first() == Some(&'[') && glob_at(&p[1..], &t[1..]);
            };
            let Some(c) = t.first() else { return false };
            let class = &p[1..end];
            let (negate, class) = match class.first() {
                Some('^' | '!') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    hit |= class[i] <= *c && *c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == *c;
                    i += 1;
                }
            }
            hit != negate && glob_at(&p[end + 1..], &t[1..])
        }
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && glob_at(&p[2..], &t[1..]),
        Some(c) => t.first() == Some(c) && glob_at(&p[1..], &t[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::DockerIgnore;

    #[test]
    fn docker_rules() {
        let ig = DockerIgnore::parse(
            "# comment\n*.md\n!README.md\ntarget\n**/*.tmp\nsecret?.txt\ndocs/**/draft-[0-9].txt\n",
        );
        assert!(ig.excludes("notes.md"));
        assert!(!ig.excludes("README.md"), "an exception brings it back");
        assert!(
            !ig.excludes("sub/notes.md"),
            "`*` does not cross directories"
        );
        assert!(ig.excludes("target"));
        assert!(
            ig.excludes("target/release/app"),
            "an excluded directory excludes its contents"
        );
        assert!(ig.excludes("a/b/c.tmp"));
        assert!(ig.excludes("c.tmp"), "`**` matches zero directories");
        assert!(ig.excludes("secret1.txt"));
        assert!(!ig.excludes("secret12.txt"));
        assert!(ig.excludes("docs/x/y/draft-3.txt"));
        assert!(!ig.excludes("docs/x/y/draft-a.txt"));
        assert!(!ig.excludes("src/main.rs"));
    }

    #[test]
    fn exceptions_inside_excluded_directories() {
        let ig = DockerIgnore::parse("assets\n!assets/keep.txt\n");
        assert!(ig.excludes("assets/big.bin"));
        assert!(!ig.excludes("assets/keep.txt"));
        assert!(ig.may_include_below("assets"));
        assert!(!ig.may_include_below("other"));
        let last_wins = DockerIgnore::parse("!a.txt\n*.txt\n");
        assert!(
            last_wins.excludes("a.txt"),
            "the last matching pattern decides"
        );
    }
}
