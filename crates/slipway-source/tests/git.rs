//! The fetcher against real git repositories made in temp dirs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use slipway_source::{SourceCache, SourceError};
use tokio_util::sync::CancellationToken;

/// A repository with a `main` branch; files are written and committed through git2.
struct Repo {
    dir: tempfile::TempDir,
    repo: git2::Repository,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_opts(
            dir.path(),
            git2::RepositoryInitOptions::new().initial_head("main"),
        )
        .unwrap();
        Repo { dir, repo }
    }

    fn url(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn write(&self, path: &str, content: &str) {
        let p = self.dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn chmod_x(&self, path: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join(path);
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn symlink(&self, target: &str, path: &str) {
        std::os::unix::fs::symlink(target, self.dir.path().join(path)).unwrap();
    }

    fn commit(&self, message: &str) -> String {
        let mut index = self.repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        self.repo
            .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .unwrap()
            .to_string()
    }
}

/// The files of a tar: path to (mode, content or link target).
fn entries(tar: &[u8]) -> BTreeMap<String, (u32, String)> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let mode = e.header().mode().unwrap();
        let content = match e.header().entry_type() {
            tar::EntryType::Symlink => format!("-> {}", e.link_name().unwrap().unwrap().display()),
            tar::EntryType::Directory => continue,
            _ => {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                s
            }
        };
        out.insert(path, (mode, content));
    }
    out
}

#[tokio::test]
async fn fetches_incrementally_and_builds_contexts_from_the_commit_only() {
    let repo = Repo::new();
    repo.write("Dockerfile", "FROM scratch\n");
    repo.write("app/Dockerfile", "FROM scratch\nCOPY . /\n");
    repo.write("app/run.sh", "#!/bin/sh\n");
    repo.chmod_x("app/run.sh");
    repo.write("app/src/main.txt", "v1");
    repo.write("app/notes.md", "notes");
    repo.write("app/README.md", "readme");
    repo.write("app/target/big.bin", "big");
    repo.write("app/target/keep.txt", "keep");
    repo.write(
        "app/.dockerignore",
        "*.md\n!README.md\ntarget\n!target/keep.txt\n",
    );
    repo.write("other/secret.txt", "not in the context");
    repo.symlink("src/main.txt", "app/link");
    let first = repo.commit("one");

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SourceCache::new(cache_dir.path()).allow_local_sources(true);
    let cancel = CancellationToken::new();
    let fetched = cache.fetch(&repo.url(), "main", &cancel).await.unwrap();
    assert_eq!(fetched.commit, first);
    assert!(fetched.mirror.starts_with(cache_dir.path()));
    assert!(
        Path::new(&fetched.mirror).join("HEAD").exists(),
        "a bare mirror"
    );

    // Uncommitted work never reaches a build.
    repo.write("app/src/uncommitted.txt", "draft");
    let ctx = cache
        .context(&fetched, "app", "app/Dockerfile")
        .await
        .unwrap();
    assert_eq!(ctx.dockerfile, "Dockerfile");
    let files = entries(&ctx.tar);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            ".dockerignore",
            "Dockerfile",
            "README.md",
            "link",
            "run.sh",
            "src/main.txt",
            "target/keep.txt"
        ]
    );
    assert_eq!(files["run.sh"].0, 0o755, "the executable bit is kept");
    assert_eq!(files["src/main.txt"].0, 0o644);
    assert_eq!(files["link"].1, "-> src/main.txt", "symlinks stay symlinks");

    // A Dockerfile outside the context is sent beside it.
    let ctx = cache.context(&fetched, "app", "Dockerfile").await.unwrap();
    assert_eq!(ctx.dockerfile, ".slipway.Dockerfile");
    assert_eq!(entries(&ctx.tar)[".slipway.Dockerfile"].1, "FROM scratch\n");

    // A new commit is fetched into the same mirror.
    repo.write("app/src/main.txt", "v2");
    let second = repo.commit("two");
    let again = cache.fetch(&repo.url(), "main", &cancel).await.unwrap();
    assert_eq!(again.commit, second);
    assert_eq!(again.mirror, fetched.mirror);
    let ctx = cache
        .context(&again, "app", "app/Dockerfile")
        .await
        .unwrap();
    assert_eq!(entries(&ctx.tar)["src/main.txt"].1, "v2");
    // The old commit's context is still the old one.
    let ctx = cache
        .context(&fetched, "app", "app/Dockerfile")
        .await
        .unwrap();
    assert_eq!(entries(&ctx.tar)["src/main.txt"].1, "v1");
}

#[tokio::test]
async fn a_fetch_killed_half_way_does_not_wedge_the_mirror() {
    let repo = Repo::new();
    repo.write("Dockerfile", "FROM scratch\n");
    repo.commit("one");
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SourceCache::new(cache_dir.path()).allow_local_sources(true);
    let cancel = CancellationToken::new();
    let fetched = cache.fetch(&repo.url(), "main", &cancel).await.unwrap();

    // What a daemon killed in the middle of a fetch leaves: git's lock files, each of which
    // makes the next fetch fail with "failed to lock file".
    for stale in ["refs/heads/main.lock", "packed-refs.lock", "config.lock"] {
        std::fs::write(fetched.mirror.join(stale), "").unwrap();
    }
    repo.write("Dockerfile", "FROM scratch\nENV V=2\n");
    let second = repo.commit("two");
    // The daemon that comes back is a new process with a cache of its own on the same
    // directory.
    drop(cache);
    let cache = SourceCache::new(cache_dir.path()).allow_local_sources(true);
    let again = cache.fetch(&repo.url(), "main", &cancel).await.unwrap();
    assert_eq!(again.commit, second);
    for stale in ["refs/heads/main.lock", "packed-refs.lock", "config.lock"] {
        assert!(
            !fetched.mirror.join(stale).exists(),
            "{stale} is still there"
        );
    }
}

#[tokio::test]
async fn each_failure_says_plainly_what_is_wrong() {
    let repo = Repo::new();
    repo.write("Dockerfile", "FROM scratch\n");
    repo.write("dir/file.txt", "x");
    repo.symlink("Dockerfile", "Linked.Dockerfile");
    repo.commit("one");
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SourceCache::new(cache_dir.path()).allow_local_sources(true);
    let cancel = CancellationToken::new();

    let err = cache.fetch(&repo.url(), "nope", &cancel).await.unwrap_err();
    assert!(matches!(err, SourceError::BranchMissing { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "branch \"nope\" does not exist in repository {}",
            repo.url()
        )
    );

    let missing = repo.dir.path().join("does-not-exist");
    let err = cache
        .fetch(&missing.display().to_string(), "main", &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("repository {} is unreachable", missing.display())),
        "{err}"
    );

    let fetched = cache.fetch(&repo.url(), "main", &cancel).await.unwrap();
    let err = cache
        .context(&fetched, "nowhere", "Dockerfile")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "source_dir \"nowhere\" does not exist in commit {}",
            fetched.commit
        )
    );
    let err = cache
        .context(&fetched, "dir/file.txt", "Dockerfile")
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::SourceDirNotADirectory { .. }),
        "{err}"
    );
    let err = cache
        .context(&fetched, "", "Missing.Dockerfile")
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::DockerfileMissing { .. }),
        "{err}"
    );
    let err = cache
        .context(&fetched, "", "Linked.Dockerfile")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a symbolic link"), "{err}");
    let err = cache
        .context(&fetched, "../up", "Dockerfile")
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::OutsideRepository { .. }),
        "{err}"
    );

    let canceled = CancellationToken::new();
    canceled.cancel();
    let err = cache
        .fetch(&repo.url(), "main", &canceled)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Canceled { .. }), "{err}");
}

/// An HTTP server on loopback that answers every request with `answer`, and records what it
/// was sent.
async fn http_stub(
    answer: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/repo.git", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let record = std::sync::Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                record
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if answer.is_empty() {
                    // Hang: never answer, hold the connection.
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                } else {
                    let _ = s.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_hanging_remote_times_out_and_refused_credentials_are_named() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SourceCache::new(cache_dir.path()).with_timeout(std::time::Duration::from_secs(1));
    let cancel = CancellationToken::new();

    let (url, _) = http_stub("").await;
    let t = std::time::Instant::now();
    let err = cache.fetch(&url, "main", &cancel).await.unwrap_err();
    assert!(matches!(err, SourceError::Timeout { .. }), "{err}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "bounded by the timeout: {:?}",
        t.elapsed()
    );
    assert_eq!(
        err.to_string(),
        format!("fetching {url} took longer than 1 s and was stopped")
    );

    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/repo.git", l.local_addr().unwrap())
    };
    let err = cache.fetch(&refused, "main", &cancel).await.unwrap_err();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err}");

    const DENY: &str = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (url, seen) = http_stub(DENY).await;
    let err = cache.fetch(&url, "main", &cancel).await.unwrap_err();
    assert!(matches!(err, SourceError::AuthRefused { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("credentials are only sent over https://"),
        "{err}"
    );

    // The app's own token is not sent over plain http:// either.
    let (url, seen_app) = http_stub(DENY).await;
    let creds = slipway_source::Credentials {
        token: Some("tok-123".into()),
    };
    let err = cache
        .fetch_with(&url, "main", &creds, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::AuthRefused { .. }), "{err}");
    for sent in [seen, seen_app] {
        let sent = sent.lock().unwrap().join("\n");
        assert!(
            !sent.to_ascii_lowercase().contains("authorization:"),
            "{sent}"
        );
    }
}

#[tokio::test]
async fn a_repository_on_the_daemons_disk_is_refused_unless_allowed() {
    let repo = Repo::new();
    repo.write("Dockerfile", "FROM scratch\n");
    repo.commit("first");
    let cache_dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let cache = SourceCache::new(cache_dir.path());
    for url in [repo.url(), format!("file://{}", repo.url())] {
        let err = cache.fetch(&url, "main", &cancel).await.unwrap_err();
        assert!(matches!(err, SourceError::LocalSource { .. }), "{err}");
        assert!(err.to_string().contains("--allow-local-sources"), "{err}");
    }
    assert!(
        std::fs::read_dir(cache_dir.path())
            .unwrap()
            .next()
            .is_none(),
        "nothing was fetched"
    );
    let cache = cache.allow_local_sources(true);
    cache.fetch(&repo.url(), "main", &cancel).await.unwrap();
}
