//! Slipway's embedded store: one SQLite file holds every app, every deployment (with its
//! phase and step tree) and the deployments' logs.
//!
//! Promises:
//! - Every write is one transaction: a crash leaves the previous state or the new one, never a
//!   mixture. Activating a deployment and superseding the previous active one happen together.
//! - A deployment is kept as its whole JSON document (what the API serializes), with the
//!   columns needed to find it (app, phase, order) beside it.
//! - The file is opened in WAL mode, so reads never wait for a deployment's writes.
//!
//! Calls run on tokio's blocking pool; each is atomic and cancel-safe (a dropped future still
//! completes or rolls back its transaction).

use std::path::Path;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use slipway_spec::lifecycle::Event;
use slipway_spec::{AppSpec, Deployment, Phase};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot make the store file {path} and its WAL files private (mode 0600)")]
    Mode {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("an app named \"{0}\" already exists")]
    NameTaken(String),
    /// The disk (or the store's size cap) is full; nothing of the failed write was kept.
    #[error("the store is full: free disk space (nothing of the change was written)")]
    Full,
    #[error("the store failed to {action}")]
    Sql {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the stored {what} {id} cannot be read")]
    Corrupt {
        what: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the store's worker stopped unexpectedly")]
    Worker(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// The stable code a deployment that fails with this error ends with: whatever the store
    /// could not do, the deployment could not be saved.
    pub fn code(&self) -> slipway_spec::FailureCode {
        match self {
            StoreError::Open { .. }
            | StoreError::Mode { .. }
            | StoreError::NameTaken(_)
            | StoreError::Full
            | StoreError::Sql { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Worker(_) => slipway_spec::FailureCode::StoreFailed,
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| match &source {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
            StoreError::Full
        }
        _ => StoreError::Sql { action, source },
    }
}

/// Creates the store file with mode 0600 when it is missing, and takes group and other
/// permissions off it and its `-wal` and `-shm` files when they have them.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(e);
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = std::path::PathBuf::from(file);
        let mode = match std::fs::metadata(&file) {
            Ok(m) => m.permissions().mode() & 0o7777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))?;
            tracing::warn!(path = %file.display(), was = format!("{mode:04o}"), "the store file was readable by other users; its mode is now 0600");
        }
    }
    Ok(())
}

/// An app as stored: its spec and times. Deployments are stored apart.
#[derive(Debug, Clone, PartialEq)]
pub struct AppRecord {
    pub id: String,
    pub name: String,
    pub spec: AppSpec,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Which log of a deployment a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    Build,
    Deploy,
}

impl LogKind {
    fn as_str(self) -> &'static str {
        match self {
            LogKind::Build => "BUILD",
            LogKind::Deploy => "DEPLOY",
        }
    }
}

/// A line of a deployment's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub seq: i64,
    pub component: String,
    pub line: String,
}

/// An API token as stored: only a digest of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub digest: String,
    pub read_only: bool,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// The store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    phase       TEXT NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_by_app ON deployments(app_id, seq DESC);
CREATE INDEX IF NOT EXISTS deployments_by_phase ON deployments(phase);
CREATE TABLE IF NOT EXISTS logs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    component     TEXT NOT NULL,
    line          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_deployment ON logs(deployment_id, kind, seq);
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    digest      TEXT NOT NULL UNIQUE,
    read_only   INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
";

impl Store {
    /// Opens (creating if needed) the store file at `path`. The file, and the WAL and
    /// shared-memory files SQLite makes beside it, are the user's alone (mode 0600), whatever
    /// the umask: SQLite gives those two the mode of the store file.
    pub async fn open(path: &Path) -> Result<Store> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let open_err = |source| StoreError::Open {
                path: path.display().to_string(),
                source,
            };
            make_private(&path).map_err(|source| StoreError::Mode {
                path: path.display().to_string(),
                source,
            })?;
            let conn = Connection::open(&path).map_err(open_err)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(open_err)?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(open_err)?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(open_err)?;
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(open_err)?;
            conn.execute_batch(SCHEMA).map_err(open_err)?;
            Ok(Store {
                conn: Arc::new(Mutex::new(conn)),
            })
        })
        .await
        .map_err(StoreError::Worker)?
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(StoreError::Worker)?
    }

    /// Makes the store refuse every write (`true`) or take them again (`false`), reads going
    /// on: for maintenance of the file, and to see what the engine does when its store
    /// refuses. A write refused this way fails with [`StoreError::Sql`].
    pub async fn set_read_only(&self, read_only: bool) -> Result<()> {
        self.with(move |c| {
            c.execute_batch(if read_only {
                "PRAGMA query_only = ON"
            } else {
                "PRAGMA query_only = OFF"
            })
            .map_err(sql("switch the store's read-only mode"))
        })
        .await
    }

    /// Caps the store file at about `bytes`: writes beyond it fail with [`StoreError::Full`],
    /// as they would on a full disk.
    pub async fn cap_size(&self, bytes: u64) -> Result<()> {
        self.with(move |c| {
            let page: u64 = c
                .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
                .map_err(sql("read the page size"))? as u64;
            c.query_row(
                &format!("PRAGMA max_page_count = {}", (bytes / page).max(1)),
                [],
                |_| Ok(()),
            )
            .map_err(sql("cap the store's size"))
        })
        .await
    }

    pub async fn insert_app(&self, app: &AppRecord) -> Result<()> {
        let app = app.clone();
        self.with(move |c| {
            let spec = serde_json::to_string(&app.spec).expect("a spec serializes");
            c.execute(
                "INSERT INTO apps (id, name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![app.id, app.name, spec, app.created_at.to_string(), app.updated_at.to_string()],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::NameTaken(app.name.clone())
                }
                e => sql("insert an app")(e),
            })?;
            Ok(())
        })
        .await
    }

    /// Replaces an app's spec (its name may change with it).
    pub async fn update_app(&self, app: &AppRecord) -> Result<()> {
        let app = app.clone();
        self.with(move |c| {
            let spec = serde_json::to_string(&app.spec).expect("a spec serializes");
            c.execute(
                "UPDATE apps SET name = ?2, spec = ?3, updated_at = ?4 WHERE id = ?1",
                params![app.id, app.name, spec, app.updated_at.to_string()],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::NameTaken(app.name.clone())
                }
                e => sql("update an app")(e),
            })?;
            Ok(())
        })
        .await
    }

    /// An app by its ID or its name.
    pub async fn app(&self, id_or_name: &str) -> Result<Option<AppRecord>> {
        let key = id_or_name.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT id, name, spec, created_at, updated_at FROM apps WHERE id = ?1 OR name = ?1 \
                 ORDER BY id = ?1 DESC LIMIT 1",
                params![key],
                row_to_app_raw,
            )
            .optional()
            .map_err(sql("read an app"))?
            .map(app_from_raw)
            .transpose()
        })
        .await
    }

    /// A page of apps, oldest first, and how many there are in all.
    pub async fn apps(&self, offset: u64, limit: u64) -> Result<(Vec<AppRecord>, u64)> {
        self.with(move |c| {
            let total: i64 = c
                .query_row("SELECT COUNT(*) FROM apps", [], |r| r.get::<_, i64>(0))
                .map_err(sql("count apps"))?;
            let mut stmt = c
                .prepare(
                    "SELECT id, name, spec, created_at, updated_at FROM apps \
                     ORDER BY created_at, id LIMIT ?1 OFFSET ?2",
                )
                .map_err(sql("list apps"))?;
            let rows = stmt
                .query_map(params![limit as i64, offset as i64], row_to_app_raw)
                .map_err(sql("list apps"))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(sql("list apps"))?;
            let apps = rows
                .into_iter()
                .map(app_from_raw)
                .collect::<Result<Vec<_>>>()?;
            Ok((apps, total as u64))
        })
        .await
    }

    /// Deletes an app with its deployments and logs.
    pub async fn delete_app(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.with(move |c| {
            let n = c
                .execute("DELETE FROM apps WHERE id = ?1", params![id])
                .map_err(sql("delete an app"))?;
            Ok(n > 0)
        })
        .await
    }

    /// Inserts or replaces a deployment.
    pub async fn save_deployment(&self, d: &Deployment) -> Result<()> {
        let d = d.clone();
        self.with(move |c| {
            let tx = c.transaction().map_err(sql("save a deployment"))?;
            save(&tx, &d)?;
            tx.commit().map_err(sql("save a deployment"))
        })
        .await
    }

    /// Saves `d` as its app's ACTIVE deployment and marks the previous ACTIVE one SUPERSEDED,
    /// in one transaction. Returns the superseded deployment's ID.
    pub async fn activate(&self, d: &Deployment) -> Result<Option<String>> {
        let mut d = d.clone();
        self.with(move |c| {
            let tx = c.transaction().map_err(sql("activate a deployment"))?;
            let previous: Vec<(String, String)> = {
                let mut stmt = tx
                    .prepare("SELECT id, doc FROM deployments WHERE app_id = ?1 AND phase = 'ACTIVE' AND id != ?2")
                    .map_err(sql("find the active deployment"))?;
                stmt.query_map(params![d.app_id, d.id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(sql("find the active deployment"))?
                    .collect::<std::result::Result<_, _>>()
                    .map_err(sql("find the active deployment"))?
            };
            let mut superseded = None;
            for (id, doc) in previous {
                let mut old: Deployment = serde_json::from_str(&doc).map_err(|source| {
                    StoreError::Corrupt {
                        what: "deployment",
                        id: id.clone(),
                        source,
                    }
                })?;
                let to = slipway_spec::lifecycle::next(old.phase, Event::Replace)
                    .unwrap_or(Phase::Superseded);
                old.set_phase(to);
                save(&tx, &old)?;
                superseded = Some(id);
            }
            if d.phase != Phase::Active {
                d.set_phase(Phase::Active);
            }
            save(&tx, &d)?;
            tx.commit().map_err(sql("activate a deployment"))?;
            Ok(superseded)
        })
        .await
    }

    pub async fn deployment(&self, app_id: &str, id: &str) -> Result<Option<Deployment>> {
        let (app_id, id) = (app_id.to_string(), id.to_string());
        self.with(move |c| {
            c.query_row(
                "SELECT id, doc FROM deployments WHERE app_id = ?1 AND id = ?2",
                params![app_id, id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(sql("read a deployment"))?
            .map(|(id, doc)| parse_deployment(&id, &doc))
            .transpose()
        })
        .await
    }

    /// A page of an app's deployments, newest first, and how many there are in all.
    pub async fn deployments(
        &self,
        app_id: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Deployment>, u64)> {
        let app_id = app_id.to_string();
        self.with(move |c| {
            let total: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM deployments WHERE app_id = ?1",
                    params![app_id],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(sql("count deployments"))?;
            let list = query_deployments(
                c,
                "SELECT id, doc FROM deployments WHERE app_id = ?1 ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
                params![app_id, limit as i64, offset as i64],
            )?;
            Ok((list, total as u64))
        })
        .await
    }

    /// The app's ACTIVE deployment, if it has one.
    pub async fn active_deployment(&self, app_id: &str) -> Result<Option<Deployment>> {
        let app_id = app_id.to_string();
        self.with(move |c| {
            Ok(query_deployments(
                c,
                "SELECT id, doc FROM deployments WHERE app_id = ?1 AND phase = 'ACTIVE' ORDER BY seq DESC LIMIT 1",
                params![app_id],
            )?
            .pop())
        })
        .await
    }

    /// Every deployment (of every app) in one of `phases`, oldest first.
    pub async fn deployments_in(&self, phases: &[Phase]) -> Result<Vec<Deployment>> {
        let phases: Vec<String> = phases.iter().map(|p| p.as_str().to_string()).collect();
        self.with(move |c| {
            let placeholders = vec!["?"; phases.len()].join(",");
            let query = format!(
                "SELECT id, doc FROM deployments WHERE phase IN ({placeholders}) ORDER BY seq"
            );
            query_deployments(c, &query, rusqlite::params_from_iter(phases.iter()))
        })
        .await
    }

    pub async fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        let t = t.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO tokens (id, name, digest, read_only, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.id, t.name, t.digest, t.read_only, t.created_at.to_string()],
            )
            .map_err(sql("create a token"))?;
            Ok(())
        })
        .await
    }

    /// Every token, oldest first, revoked ones included.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT id, name, digest, read_only, created_at, revoked_at FROM tokens ORDER BY created_at, id")
                .map_err(sql("list tokens"))?;
            stmt.query_map([], row_to_token)
                .map_err(sql("list tokens"))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(sql("list tokens"))
        })
        .await
    }

    /// The token whose secret has this digest, if it exists and is not revoked.
    pub async fn live_token(&self, digest: &str) -> Result<Option<TokenRecord>> {
        let digest = digest.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT id, name, digest, read_only, created_at, revoked_at FROM tokens WHERE digest = ?1 AND revoked_at IS NULL",
                params![digest],
                row_to_token,
            )
            .optional()
            .map_err(sql("read a token"))
        })
        .await
    }

    /// Revokes a token by ID or name; `false` when there is none (or it was revoked already).
    pub async fn revoke_token(&self, id_or_name: &str) -> Result<bool> {
        let key = id_or_name.to_string();
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE tokens SET revoked_at = ?2 WHERE (id = ?1 OR name = ?1) AND revoked_at IS NULL",
                    params![key, Timestamp::now().to_string()],
                )
                .map_err(sql("revoke a token"))?;
            Ok(n > 0)
        })
        .await
    }

    /// Appends lines to a deployment's log.
    pub async fn append_log(
        &self,
        deployment_id: &str,
        kind: LogKind,
        component: &str,
        lines: Vec<String>,
    ) -> Result<()> {
        let (deployment_id, component) = (deployment_id.to_string(), component.to_string());
        self.with(move |c| {
            let tx = c.transaction().map_err(sql("append to a log"))?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO logs (deployment_id, kind, component, line) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(sql("append to a log"))?;
                for line in lines {
                    stmt.execute(params![deployment_id, kind.as_str(), component, line])
                        .map_err(sql("append to a log"))?;
                }
            }
            tx.commit().map_err(sql("append to a log"))
        })
        .await
    }

    /// The lines of a deployment's log after `after` (a line's `seq`), optionally of one
    /// component only.
    pub async fn read_log(
        &self,
        deployment_id: &str,
        kind: LogKind,
        component: Option<&str>,
        after: i64,
    ) -> Result<Vec<LogLine>> {
        let (deployment_id, component) = (deployment_id.to_string(), component.map(str::to_string));
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, component, line FROM logs WHERE deployment_id = ?1 AND kind = ?2 \
                     AND (?3 IS NULL OR component = ?3) AND seq > ?4 ORDER BY seq",
                )
                .map_err(sql("read a log"))?;
            stmt.query_map(
                params![deployment_id, kind.as_str(), component, after],
                |r| {
                    Ok(LogLine {
                        seq: r.get(0)?,
                        component: r.get(1)?,
                        line: r.get(2)?,
                    })
                },
            )
            .map_err(sql("read a log"))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(sql("read a log"))
        })
        .await
    }
}

fn row_to_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let time = |s: String| s.parse::<Timestamp>().unwrap_or(Timestamp::UNIX_EPOCH);
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        digest: r.get(2)?,
        read_only: r.get(3)?,
        created_at: time(r.get(4)?),
        revoked_at: r.get::<_, Option<String>>(5)?.map(time),
    })
}

type RawApp = (String, String, String, String, String);

fn row_to_app_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawApp> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn app_from_raw((id, name, spec, created, updated): RawApp) -> Result<AppRecord> {
    let spec: AppSpec = serde_json::from_str(&spec).map_err(|source| StoreError::Corrupt {
        what: "app",
        id: id.clone(),
        source,
    })?;
    let time = |s: &str| s.parse::<Timestamp>().unwrap_or(Timestamp::UNIX_EPOCH);
    Ok(AppRecord {
        id,
        name,
        spec,
        created_at: time(&created),
        updated_at: time(&updated),
    })
}

fn parse_deployment(id: &str, doc: &str) -> Result<Deployment> {
    serde_json::from_str(doc).map_err(|source| StoreError::Corrupt {
        what: "deployment",
        id: id.to_string(),
        source,
    })
}

fn query_deployments(
    c: &Connection,
    query: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Deployment>> {
    let mut stmt = c.prepare(query).map_err(sql("list deployments"))?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(sql("list deployments"))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(sql("list deployments"))?;
    rows.iter()
        .map(|(id, doc)| parse_deployment(id, doc))
        .collect()
}

fn save(tx: &rusqlite::Transaction<'_>, d: &Deployment) -> Result<()> {
    let doc = serde_json::to_string(d).expect("a deployment serializes");
    let updated = tx
        .execute(
            "UPDATE deployments SET phase = ?2, doc = ?3 WHERE id = ?1",
            params![d.id, d.phase.as_str(), doc],
        )
        .map_err(sql("save a deployment"))?;
    if updated == 0 {
        tx.execute(
            "INSERT INTO deployments (id, app_id, seq, phase, doc) VALUES \
             (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployments), ?3, ?4)",
            params![d.id, d.app_id, d.phase.as_str(), doc],
        )
        .map_err(sql("save a deployment"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_spec::{DeploymentKind, now};

    fn app(name: &str) -> AppRecord {
        AppRecord {
            id: slipway_spec::new_id(),
            name: name.into(),
            spec: AppSpec {
                name: name.into(),
                ..AppSpec::default()
            },
            created_at: now(),
            updated_at: now(),
        }
    }

    #[tokio::test]
    async fn a_full_store_refuses_the_write_and_keeps_what_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("slipway.db")).await.unwrap();
        let a = app("full");
        store.insert_app(&a).await.unwrap();
        let mut d = Deployment::new(&a.id, a.spec.clone(), DeploymentKind::Build, "app created");
        store.save_deployment(&d).await.unwrap();
        store.cap_size(64 * 1024).await.unwrap();
        d.cause = "x".repeat(256 * 1024);
        let err = store.save_deployment(&d).await.unwrap_err();
        assert!(matches!(err, StoreError::Full), "{err}");
        assert_eq!(
            err.to_string(),
            "the store is full: free disk space (nothing of the change was written)"
        );
        let kept = store.deployment(&a.id, &d.id).await.unwrap().unwrap();
        assert_eq!(
            kept.cause, "app created",
            "the failed write left the previous state"
        );
    }

    #[tokio::test]
    async fn activation_supersedes_the_previous_active_deployment_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway.db");
        let store = Store::open(&path).await.unwrap();
        let a = app("shop");
        store.insert_app(&a).await.unwrap();
        assert!(matches!(
            store.insert_app(&app("shop")).await,
            Err(StoreError::NameTaken(n)) if n == "shop"
        ));

        let first = Deployment::new(&a.id, a.spec.clone(), DeploymentKind::Build, "app created");
        store.save_deployment(&first).await.unwrap();
        assert_eq!(store.activate(&first).await.unwrap(), None);
        let second = Deployment::new(
            &a.id,
            a.spec.clone(),
            DeploymentKind::Restart,
            "manual restart",
        );
        store.save_deployment(&second).await.unwrap();
        assert_eq!(
            store.activate(&second).await.unwrap(),
            Some(first.id.clone())
        );
        drop(store);

        let store = Store::open(&path).await.unwrap();
        let (list, total) = store.deployments(&a.id, 0, 10).await.unwrap();
        assert_eq!(total, 2);
        assert_eq!(list[0].id, second.id, "newest first");
        assert_eq!(list[0].phase, Phase::Active);
        assert_eq!(list[1].phase, Phase::Superseded);
        assert_eq!(
            store.active_deployment(&a.id).await.unwrap().unwrap().id,
            second.id
        );
        assert_eq!(store.app("shop").await.unwrap().unwrap().id, a.id);
        assert_eq!(store.app(&a.id).await.unwrap().unwrap().name, "shop");

        store
            .append_log(
                &second.id,
                LogKind::Build,
                "web",
                vec!["one".into(), "two".into()],
            )
            .await
            .unwrap();
        let lines = store
            .read_log(&second.id, LogKind::Build, None, 0)
            .await
            .unwrap();
        assert_eq!(
            lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        let rest = store
            .read_log(&second.id, LogKind::Build, Some("web"), lines[0].seq)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);

        assert!(store.delete_app(&a.id).await.unwrap());
        assert_eq!(store.deployments(&a.id, 0, 10).await.unwrap().1, 0);
        assert!(
            store
                .read_log(&second.id, LogKind::Build, None, 0)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
