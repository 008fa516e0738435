use std::path::Path;

use git2::{ObjectType, Oid, Repository, Tree, TreeWalkMode, TreeWalkResult};

use crate::SourceError;
use crate::dockerignore::DockerIgnore;

/// A build context: a tar of the source directory, and the Dockerfile's path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildContext {
    pub tar: Vec<u8>,
    /// The Dockerfile's path inside the tar, as the builder's `dockerfile` option wants it.
    pub dockerfile: String,
    pub commit: String,
}

/// Where a Dockerfile that lies outside `source_dir` is put in the context.
const OUTSIDE_DOCKERFILE: &str = ".slipway.Dockerfile";

pub(crate) fn make(
    mirror: &Path,
    commit: &str,
    source_dir: &str,
    dockerfile_path: &str,
) -> Result<BuildContext, SourceError> {
    for (p, v) in [
        ("source_dir", source_dir),
        ("dockerfile_path", dockerfile_path),
    ] {
        if v.starts_with('/') || v.split('/').any(|s| s == "..") {
            return Err(SourceError::OutsideRepository {
                path: format!("{p} {v}"),
            });
        }
    }
    let read = |source| SourceError::Read {
        commit: commit.to_string(),
        source,
    };
    let repo = Repository::open_bare(mirror).map_err(|source| SourceError::Mirror {
        path: mirror.to_path_buf(),
        source,
    })?;
    let oid = Oid::from_str(commit).map_err(read)?;
    let commit_obj = repo.find_commit(oid).map_err(read)?;
    let mtime = u64::try_from(commit_obj.time().seconds()).unwrap_or(0);
    let root = commit_obj.tree().map_err(read)?;

    let dir_tree: Tree<'_> = if source_dir.is_empty() {
        root.clone()
    } else {
        let entry =
            root.get_path(Path::new(source_dir))
                .map_err(|_| SourceError::SourceDirMissing {
                    path: source_dir.into(),
                    commit: commit.into(),
                })?;
        if entry.filemode() == 0o120000 {
            return Err(SourceError::Symlink {
                field: "source_dir",
                path: source_dir.into(),
                commit: commit.into(),
            });
        }
        if entry.kind() != Some(ObjectType::Tree) {
            return Err(SourceError::SourceDirNotADirectory {
                path: source_dir.into(),
                commit: commit.into(),
            });
        }
        repo.find_tree(entry.id()).map_err(read)?
    };

    let dockerfile_entry = root
        .get_path(Path::new(dockerfile_path))
        .ok()
        .filter(|e| e.kind() == Some(ObjectType::Blob))
        .ok_or_else(|| SourceError::DockerfileMissing {
            path: dockerfile_path.into(),
            commit: commit.into(),
        })?;

    if dockerfile_entry.filemode() == 0o120000 {
        return Err(SourceError::Symlink {
            field: "dockerfile_path",
            path: dockerfile_path.into(),
            commit: commit.into(),
        });
    }
    let ignore = match dir_tree.get_name(".dockerignore") {
        Some(e) if e.kind() == Some(ObjectType::Blob) => {
            let blob = repo.find_blob(e.id()).map_err(read)?;
            DockerIgnore::parse(&String::from_utf8_lossy(blob.content()))
        }
        _ => DockerIgnore::default(),
    };
    // The Dockerfile's path relative to the context, when it lies inside it.
    let inside = if source_dir.is_empty() {
        Some(dockerfile_path.to_string())
    } else {
        dockerfile_path
            .strip_prefix(source_dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(str::to_string)
    };
    let always = |path: &str| path == ".dockerignore" || Some(path) == inside.as_deref();

    let mut builder = tar::Builder::new(Vec::new());
    let mut failure: Option<SourceError> = None;
    dir_tree
        .walk(TreeWalkMode::PreOrder, |parent, entry| {
            let Ok(name) = entry.name() else {
                return TreeWalkResult::Skip;
            };
            let path = format!("{parent}{name}");
            let is_tree = entry.kind() == Some(ObjectType::Tree);
            if ignore.excludes(&path) && !always(&path) {
                // An excluded directory is still walked when an exception may bring back
                // something below it; its own entry is left out.
                return if is_tree && ignore.may_include_below(&path) {
                    TreeWalkResult::Ok
                } else {
                    TreeWalkResult::Skip
                };
            }
            let result = match entry.kind() {
                Some(ObjectType::Tree) => append_dir(&mut builder, &path, mtime),
                Some(ObjectType::Blob) => {
                    repo.find_blob(entry.id()).map_err(read).and_then(|blob| {
                        append_blob(&mut builder, &path, entry.filemode(), blob.content(), mtime)
                    })
                }
                // Submodules (commits) have no content in this repository.
                _ => Ok(()),
            };
            match result {
                Ok(()) => TreeWalkResult::Ok,
                Err(e) => {
                    failure = Some(e);
                    TreeWalkResult::Abort
                }
            }
        })
        .map_err(|e| failure.take().unwrap_or_else(|| read(e)))?;
    if let Some(e) = failure {
        return Err(e);
    }

    let dockerfile = match inside {
        Some(p) => p,
        None => {
            let blob = repo.find_blob(dockerfile_entry.id()).map_err(read)?;
            append_blob(
                &mut builder,
                OUTSIDE_DOCKERFILE,
                0o100644,
                blob.content(),
                mtime,
            )?;
            OUTSIDE_DOCKERFILE.to_string()
        }
    };
    let tar = builder.into_inner().map_err(SourceError::Archive)?;
    Ok(BuildContext {
        tar,
        dockerfile,
        commit: commit.to_string(),
    })
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mtime: u64) -> Result<(), SourceError> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0, mtime);
    b.append_data(&mut h, format!("{path}/"), std::io::empty())
        .map_err(SourceError::Archive)
}

fn append_blob(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    filemode: i32,
    content: &[u8],
    mtime: u64,
) -> Result<(), SourceError> {
    if filemode == 0o120000 {
        let target = String::from_utf8_lossy(content).to_string();
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
        return b
            .append_link(&mut h, path, target)
            .map_err(SourceError::Archive);
    }
    let mode = if filemode == 0o100755 { 0o755 } else { 0o644 };
    let mut h = header(tar::EntryType::Regular, mode, content.len() as u64, mtime);
    b.append_data(&mut h, path, content)
        .map_err(SourceError::Archive)
}
