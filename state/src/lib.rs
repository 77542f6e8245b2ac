//! refreshd's persistent state: one SQLite database (`var/lib/refreshd/state.db`).
//!
//! Everything refreshd must remember across a crash lives here: installed snaps and their
//! revisions, changes and their tasks, and idempotency keys. The database runs in WAL mode with
//! `synchronous=FULL`, so a commit that returned has reached the disk: the engine commits every
//! task status before acting on it, and a crash at any point resumes from the last commit.
//!
//! The API is typed and synchronous; the daemon calls it from blocking threads.

mod batch;
mod schema;
mod settings;
mod snapshots;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use refreshd_snap::text::printable;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;

pub use batch::BatchItem;
pub use schema::SCHEMA_VERSION;
pub use snapshots::SnapshotRow;

pub type ChangeId = u64;
pub type TaskId = u64;

/// Errors from the state store. Each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open state database {path}: {error}")]
    Open {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("state database {path} is damaged ({detail}); refreshd leaves it as it is: restore it from a backup, or move it aside to start with no snaps recorded")]
    Damaged { path: PathBuf, detail: String },
    #[error("state database {path} has schema version {found}, newer than the {supported} this refreshd knows; run a newer refreshd")]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("snap {snap:?} has change {change} in progress")]
    Conflict { snap: String, change: ChangeId },
    #[error("idempotency key {key:?} was already used for a {request} request")]
    KeyReused { key: String, request: String },
    #[error("state database: {0}")]
    Sqlite(rusqlite::Error),
    #[error("state database holds malformed JSON: {0}")]
    Json(serde_json::Error),
    #[error("state database holds an unknown task status {0:?}")]
    BadStatus(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// These messages are printed on their own (the API's answers), so each says its cause and
// none has a source: a chain printed whole would repeat it. Hence no `#[from]` above.
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Sqlite(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Json(e)
    }
}

impl Error {
    /// The database's filesystem refuses it (ENOSPC, EIO, EROFS; a read that fails under a
    /// running daemon can look like a damaged page too): nothing the caller can do but fix the
    /// disk.
    pub fn is_storage_failure(&self) -> bool {
        use rusqlite::ErrorCode::*;
        matches!(
            self,
            Error::Sqlite(e) if matches!(
                e.sqlite_error_code(),
                Some(DiskFull | SystemIoFailure | ReadOnly | CannotOpen | DatabaseCorrupt)
            )
        )
    }
}

/// Makes the database at `path` private: created 0600 when absent (SQLite then creates its
/// `-wal` and `-shm` with the same mode), and set to 0600 with its companions when present.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !m.is_file() || m.permissions().mode() & 0o777 == 0o600 {
            continue;
        }
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            // Nothing is written on a read-only filesystem either; opening says so.
            Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {}
            other => other?,
        }
    }
    Ok(())
}

/// An I/O error as the SQLite error type [`Error::Open`] carries.
fn io_error(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        Some(e.to_string()),
    )
}

/// SQLite's verdict that a file is not a sound database (as opposed to one it cannot reach).
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Task status. The allowed transitions between them are the engine's business (one table in
/// `refreshd::engine::status`); the store only persists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Do,
    Doing,
    Done,
    Undo,
    Undoing,
    Undone,
    Error,
    Hold,
    Wait,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Do,
        Status::Doing,
        Status::Done,
        Status::Undo,
        Status::Undoing,
        Status::Undone,
        Status::Error,
        Status::Hold,
        Status::Wait,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Do => "Do",
            Status::Doing => "Doing",
            Status::Done => "Done",
            Status::Undo => "Undo",
            Status::Undoing => "Undoing",
            Status::Undone => "Undone",
            Status::Error => "Error",
            Status::Hold => "Hold",
            Status::Wait => "Wait",
        }
    }

    /// True when a task in this status will not move again on its own.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Done | Status::Undone | Status::Error | Status::Hold
        )
    }
}

impl FromStr for Status {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::BadStatus(s.to_owned()))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch, the unit of every time in the database.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapRow {
    pub name: String,
    pub snap_name: String,
    pub instance_key: Option<String>,
    pub current: Option<String>,
    pub channel: Option<String>,
    pub hold: Option<String>,
    pub settings: Value,
    pub installed: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRow {
    pub snap: String,
    pub revision: String,
    pub version: String,
    pub summary: Option<String>,
    pub sha3_384: String,
    pub size: u64,
    pub manifest: String,
    pub added: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    pub id: ChangeId,
    pub kind: String,
    pub summary: String,
    pub snap: Option<String>,
    pub data: Value,
    pub spawn_time: i64,
    pub ready_time: Option<i64>,
    pub abort_requested: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: TaskId,
    pub change_id: ChangeId,
    pub seq: u32,
    pub kind: String,
    pub summary: String,
    pub status: Status,
    pub data: Value,
    pub waits_for: Vec<TaskId>,
    pub log: Vec<String>,
    pub progress_label: String,
    pub progress_done: u64,
    pub progress_total: u64,
    pub retry_count: u32,
    pub retry_reason: Option<String>,
    pub wait_until: Option<i64>,
    pub wait_event: Option<String>,
    pub wait_reason: Option<String>,
    pub spawn_time: i64,
    pub ready_time: Option<i64>,
}

/// A change to create: its tasks in order, each naming the earlier tasks it waits for by index.
#[derive(Debug, Clone, Default)]
pub struct NewChange {
    pub kind: String,
    pub summary: String,
    pub snap: Option<String>,
    pub data: Value,
    pub tasks: Vec<NewTask>,
}

#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub kind: String,
    pub summary: String,
    pub data: Value,
    /// Indices into [`NewChange::tasks`] of tasks that must be Done first; must be earlier.
    pub waits_for: Vec<usize>,
}

/// The idempotency key a mutating request carried, scoped to the caller's uid.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey<'a> {
    pub uid: u32,
    pub key: &'a str,
    pub request: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new change was made.
    New(ChangeId),
    /// The idempotency key was seen before: this is the change it made then.
    Existing(ChangeId),
}

impl Created {
    pub fn id(self) -> ChangeId {
        match self {
            Created::New(id) | Created::Existing(id) => id,
        }
    }
}

/// Which changes to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Select {
    #[default]
    InProgress,
    Ready,
    All,
}

/// Keep at most this much history: changes ready for longer than `max_age_ms`, and all but the
/// newest `max_count` ready changes, are deleted with their tasks and idempotency keys.
#[derive(Debug, Clone, Copy)]
pub struct PrunePolicy {
    pub max_age_ms: i64,
    pub max_count: u32,
}

impl Default for PrunePolicy {
    fn default() -> Self {
        PrunePolicy {
            max_age_ms: 24 * 3600 * 1000,
            max_count: 500,
        }
    }
}

pub struct State {
    conn: Connection,
}

impl State {
    /// Opens (creating if needed) the database at `path` and migrates it to the current schema.
    /// The database and its `-wal` and `-shm` files are made private (0600), also when an
    /// older refreshd left them readable: they hold task logs with the output of root's hooks.
    pub fn open(path: &Path) -> Result<State> {
        make_private(path).map_err(|e| Error::Open {
            path: path.to_owned(),
            error: io_error(e),
        })?;
        let conn = Connection::open(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            error: source,
        })?;
        let damaged = |detail: String| Error::Damaged {
            path: path.to_owned(),
            detail,
        };
        // Damage found now stops the daemon before it acts on half a state; found later, it
        // would fail changes midway. The check reads every page: the database is small.
        let checked = Self::setup(conn, crate::schema::SCHEMA_VERSION).and_then(|st| {
            let verdict: String = st.conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            Ok((st, verdict))
        });
        match checked {
            Ok((st, verdict)) if verdict == "ok" => Ok(st),
            // The first problem it names (a list of them can be long).
            Ok((_, verdict)) => Err(damaged(
                verdict
                    .lines()
                    .find(|l| !l.trim().is_empty() && !l.starts_with("***"))
                    .unwrap_or("quick_check failed")
                    .to_owned(),
            )),
            Err(Error::Sqlite(e)) if is_damage(&e) => Err(damaged(e.to_string())),
            // Named here so that no caller has to say which database it opened.
            Err(Error::Sqlite(error)) => Err(Error::Open {
                path: path.to_owned(),
                error,
            }),
            Err(e) => Err(e),
        }
    }

    /// A second, read-only connection to the database at `path`, which [`State::open`] has
    /// created and migrated. In WAL mode its reads neither wait for the writer's commits nor
    /// hold them up; [`State::read`] gives a consistent view across several queries.
    pub fn open_read_only(path: &Path) -> Result<State> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| Error::Open {
            path: path.to_owned(),
            error: source,
        })?;
        let open_err = |error| Error::Open {
            path: path.to_owned(),
            error,
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        let found: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if found > crate::schema::SCHEMA_VERSION {
            return Err(Error::TooNew {
                path: path.to_owned(),
                found,
                supported: crate::schema::SCHEMA_VERSION,
            });
        }
        Ok(State { conn })
    }

    /// Runs `f` inside one read transaction, so that what it reads with several queries is one
    /// moment of the database.
    pub fn read<T>(&mut self, f: impl FnOnce(&mut State) -> T) -> Result<T> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        // A read transaction has nothing to keep, and one left open would hold its old
        // snapshot (and the WAL behind it) for ever: it ends, whatever `f` did.
        let _ = self.conn.execute_batch("ROLLBACK");
        out.map_err(|p| std::panic::resume_unwind(p))
    }

    pub fn open_in_memory() -> Result<State> {
        Self::setup(Connection::open_in_memory()?, crate::schema::SCHEMA_VERSION)
    }

    fn setup(mut conn: Connection, target: u32) -> Result<State> {
        // WAL: readers never block the writer; FULL: a returned commit survives power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        schema::migrate_to(&mut conn, target)?;
        Ok(State { conn })
    }

    pub fn schema_version(&self) -> Result<u32> {
        schema::version(&self.conn)
    }

    /// `PRAGMA integrity_check`: "ok" when the database is sound.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    // ---- snaps and revisions ----

    pub fn snaps(&self) -> Result<Vec<SnapRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {SNAP_COLS} FROM snaps ORDER BY name"))?;
        let rows = st.query_map([], snap_from_row)?;
        collect(rows)
    }

    pub fn snap(&self, name: &str) -> Result<Option<SnapRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {SNAP_COLS} FROM snaps WHERE name = ?1"))?;
        let row = st.query_row([name], snap_from_row).optional()?;
        row.transpose()
    }

    /// Inserts the snap or updates every column of an existing one.
    pub fn put_snap(&mut self, s: &SnapRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO snaps (name, snap_name, instance_key, current, channel, hold, settings, installed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(name) DO UPDATE SET snap_name = excluded.snap_name,
               instance_key = excluded.instance_key, current = excluded.current,
               channel = excluded.channel, hold = excluded.hold, settings = excluded.settings,
               installed = excluded.installed",
            params![
                s.name,
                s.snap_name,
                s.instance_key,
                s.current,
                s.channel,
                s.hold,
                s.settings.to_string(),
                s.installed
            ],
        )?;
        Ok(())
    }

    pub fn set_current(&mut self, name: &str, revision: Option<&str>) -> Result<()> {
        self.conn.execute(
            "UPDATE snaps SET current = ?2 WHERE name = ?1",
            params![name, revision],
        )?;
        Ok(())
    }

    /// Holds the snap's refreshes since a revert (`hold = 'reverted'`), unless they are held
    /// forever already: refreshes that name it, or lifting the hold, end it.
    pub fn hold_since_revert(&mut self, name: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE snaps SET hold = 'reverted' WHERE name = ?1 AND (hold IS NULL OR hold <> 'forever')",
            [name],
        )?;
        Ok(())
    }

    /// Ends the hold a revert put on the snap (another hold stays).
    pub fn lift_revert_hold(&mut self, name: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE snaps SET hold = NULL WHERE name = ?1 AND hold = 'reverted'",
            [name],
        )?;
        Ok(())
    }

    /// Deletes the snap and its revisions.
    pub fn delete_snap(&mut self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM snaps WHERE name = ?1", [name])?;
        Ok(())
    }

    pub fn revisions(&self, snap: &str) -> Result<Vec<RevisionRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REV_COLS} FROM revisions WHERE snap = ?1 ORDER BY added, revision"
        ))?;
        let rows = st.query_map([snap], rev_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn revision(&self, snap: &str, revision: &str) -> Result<Option<RevisionRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REV_COLS} FROM revisions WHERE snap = ?1 AND revision = ?2"
        ))?;
        Ok(st.query_row([snap, revision], rev_from_row).optional()?)
    }

    pub fn put_revision(&mut self, r: &RevisionRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO revisions (snap, revision, version, summary, sha3_384, size, manifest, added)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(snap, revision) DO UPDATE SET version = excluded.version,
               summary = excluded.summary, sha3_384 = excluded.sha3_384, size = excluded.size,
               manifest = excluded.manifest",
            params![
                r.snap,
                r.revision,
                r.version,
                r.summary,
                r.sha3_384,
                r.size as i64,
                r.manifest,
                r.added
            ],
        )?;
        Ok(())
    }

    pub fn delete_revision(&mut self, snap: &str, revision: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM revisions WHERE snap = ?1 AND revision = ?2",
            [snap, revision],
        )?;
        Ok(())
    }

    /// Deletes the record of a revision a snap no longer keeps. Refuses (returns false, deletes
    /// nothing) when it is the snap's current revision: the check and the delete are one
    /// statement, so nothing can make it current in between. Returns whether a row was deleted
    /// (false too when there was none: a second run after a crash).
    pub fn delete_old_revision(&mut self, snap: &str, revision: &str) -> Result<bool> {
        let n = self.conn.execute(
            "DELETE FROM revisions WHERE snap = ?1 AND revision = ?2
               AND NOT EXISTS (SELECT 1 FROM snaps WHERE name = ?1 AND current IS ?2)",
            [snap, revision],
        )?;
        Ok(n > 0)
    }

    // ---- changes and tasks ----

    /// Creates a change with its tasks in one transaction.
    ///
    /// Fails with [`Error::Conflict`] when `new.snap` already has an unfinished change. With an
    /// idempotency key that was seen before, creates nothing and returns the earlier change.
    pub fn create_change(
        &mut self,
        new: &NewChange,
        key: Option<IdempotencyKey<'_>>,
    ) -> Result<Created> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        if let Some(k) = key {
            if let Some((request, id)) = lookup_key(&tx, k.uid, k.key)? {
                if request != k.request {
                    return Err(Error::KeyReused {
                        key: k.key.to_owned(),
                        request,
                    });
                }
                return Ok(Created::Existing(id));
            }
            if let Some(request) = batch::lookup(&tx, k.uid, k.key)?
                .first()
                .map(|b| b.0.clone())
            {
                return Err(Error::KeyReused {
                    key: k.key.to_owned(),
                    request,
                });
            }
        }
        if let Some(snap) = &new.snap {
            if let Some(change) = in_progress_for(&tx, snap)? {
                return Err(Error::Conflict {
                    snap: snap.clone(),
                    change,
                });
            }
        }
        let change = insert_change(&tx, new, now)?;
        if let Some(k) = key {
            tx.execute(
                "INSERT INTO idempotency_keys (uid, key, request, change_id, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![k.uid, k.key, k.request, change as i64, now],
            )?;
        }
        tx.commit()?;
        Ok(Created::New(change))
    }

    /// The change an idempotency key made, and the request it was used for.
    pub fn idempotency_key(&self, uid: u32, key: &str) -> Result<Option<(String, ChangeId)>> {
        lookup_key(&self.conn, uid, key)
    }

    /// The unfinished change touching `snap`, if any.
    pub fn change_in_progress_for(&self, snap: &str) -> Result<Option<ChangeId>> {
        in_progress_for(&self.conn, snap)
    }

    pub fn change(&self, id: ChangeId) -> Result<Option<ChangeRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {CHANGE_COLS} FROM changes WHERE id = ?1"))?;
        let row = st.query_row([id as i64], change_from_row).optional()?;
        row.transpose()
    }

    /// Changes, newest first.
    pub fn changes(&self, select: Select, snap: Option<&str>) -> Result<Vec<ChangeRow>> {
        let cond = match select {
            Select::InProgress => "ready_time IS NULL",
            Select::Ready => "ready_time IS NOT NULL",
            Select::All => "1",
        };
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {CHANGE_COLS} FROM changes WHERE {cond} AND (?1 IS NULL OR snap = ?1) ORDER BY id DESC"
        ))?;
        let rows = st.query_map([snap], change_from_row)?;
        collect(rows)
    }

    pub fn set_abort_requested(&mut self, id: ChangeId) -> Result<()> {
        self.conn.execute(
            "UPDATE changes SET abort_requested = 1 WHERE id = ?1",
            [id as i64],
        )?;
        Ok(())
    }

    pub fn set_change_ready(&mut self, id: ChangeId, ready_time: Option<i64>) -> Result<()> {
        self.conn.execute(
            "UPDATE changes SET ready_time = ?2 WHERE id = ?1",
            params![id as i64, ready_time],
        )?;
        Ok(())
    }

    /// Replaces the change's data object.
    pub fn set_change_data(&mut self, id: ChangeId, data: &Value) -> Result<()> {
        self.conn.execute(
            "UPDATE changes SET data = ?2 WHERE id = ?1",
            params![id as i64, data.to_string()],
        )?;
        Ok(())
    }

    /// The tasks of a change, in order.
    pub fn tasks(&self, change: ChangeId) -> Result<Vec<TaskRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {TASK_COLS} FROM tasks WHERE change_id = ?1 ORDER BY seq"
        ))?;
        let rows = st.query_map([change as i64], task_from_row)?;
        collect(rows)
    }

    pub fn task(&self, id: TaskId) -> Result<Option<TaskRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {TASK_COLS} FROM tasks WHERE id = ?1"))?;
        let row = st.query_row([id as i64], task_from_row).optional()?;
        row.transpose()
    }

    /// Tasks parked in Wait on `event`.
    pub fn tasks_waiting_on(&self, event: &str) -> Result<Vec<TaskRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {TASK_COLS} FROM tasks WHERE wait_event = ?1 AND status = 'Wait'"
        ))?;
        let rows = st.query_map([event], task_from_row)?;
        collect(rows)
    }

    /// The distinct events that parked tasks wait on and that start with `prefix`.
    pub fn events_waited_on(&self, prefix: &str) -> Result<Vec<String>> {
        let mut st = self.conn.prepare_cached(
            "SELECT DISTINCT wait_event FROM tasks WHERE status = 'Wait' \
             AND substr(wait_event, 1, length(?1)) = ?1",
        )?;
        let rows = st.query_map([prefix], |r| Ok(Ok(r.get::<_, String>(0)?)))?;
        collect(rows)
    }

    /// Writes every mutable column of a task.
    pub fn save_task(&mut self, t: &TaskRow) -> Result<()> {
        save_task_on(&self.conn, t)
    }

    /// Saves several tasks atomically: either all new statuses are on disk or none is.
    pub fn save_tasks(&mut self, tasks: &[TaskRow]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for t in tasks {
            save_task_on(&tx, t)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes ready changes beyond the policy. Returns how many were deleted.
    pub fn prune(&mut self, policy: PrunePolicy, now: i64) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut n = tx.execute(
            "DELETE FROM changes WHERE ready_time IS NOT NULL AND ready_time < ?1",
            [now - policy.max_age_ms],
        )?;
        n += tx.execute(
            "DELETE FROM changes WHERE ready_time IS NOT NULL AND id NOT IN
               (SELECT id FROM changes WHERE ready_time IS NOT NULL ORDER BY ready_time DESC, id DESC LIMIT ?1)",
            [policy.max_count],
        )?;
        tx.commit()?;
        Ok(n)
    }
}

/// Inserts `new` and its tasks (the caller holds the transaction and checked for conflicts).
fn insert_change(tx: &Connection, new: &NewChange, now: i64) -> Result<ChangeId> {
    tx.execute(
        "INSERT INTO changes (kind, summary, snap, data, spawn_time) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![new.kind, new.summary, new.snap, new.data.to_string(), now],
    )?;
    let change = tx.last_insert_rowid() as ChangeId;
    let mut ids: Vec<TaskId> = Vec::with_capacity(new.tasks.len());
    for (seq, t) in new.tasks.iter().enumerate() {
        let waits: Vec<TaskId> = t
            .waits_for
            .iter()
            .map(|&i| {
                assert!(i < seq, "task {seq} may only wait for earlier tasks");
                ids[i]
            })
            .collect();
        tx.execute(
            "INSERT INTO tasks (change_id, seq, kind, summary, status, data, waits_for, spawn_time)
             VALUES (?1, ?2, ?3, ?4, 'Do', ?5, ?6, ?7)",
            params![
                change as i64,
                seq as i64,
                t.kind,
                t.summary,
                t.data.to_string(),
                serde_json::to_string(&waits)?,
                now
            ],
        )?;
        ids.push(tx.last_insert_rowid() as TaskId);
    }
    Ok(change)
}

/// Text people read — log lines, retry and wait reasons, the progress label — is stored
/// escaped ([`printable`]): much of it quotes what users or the store chose (file names,
/// command lines, server messages), and whatever a task handler wrote, nothing that reaches
/// `refreshctl tasks` or the API may start a forged line or drive a terminal.
fn save_task_on(conn: &Connection, t: &TaskRow) -> Result<()> {
    let log: Vec<Cow<'_, str>> = t.log.iter().map(|l| printable(l)).collect();
    conn.execute(
        "UPDATE tasks SET status = ?2, data = ?3, log = ?4, progress_label = ?5,
           progress_done = ?6, progress_total = ?7, retry_count = ?8, retry_reason = ?9,
           wait_until = ?10, wait_event = ?11, wait_reason = ?12, ready_time = ?13
         WHERE id = ?1",
        params![
            t.id as i64,
            t.status.as_str(),
            t.data.to_string(),
            serde_json::to_string(&log)?,
            printable(&t.progress_label),
            t.progress_done as i64,
            t.progress_total as i64,
            t.retry_count,
            t.retry_reason.as_deref().map(printable),
            t.wait_until,
            t.wait_event,
            t.wait_reason.as_deref().map(printable),
            t.ready_time
        ],
    )?;
    Ok(())
}

fn lookup_key(conn: &Connection, uid: u32, key: &str) -> Result<Option<(String, ChangeId)>> {
    Ok(conn
        .query_row(
            "SELECT request, change_id FROM idempotency_keys WHERE uid = ?1 AND key = ?2",
            params![uid, key],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as ChangeId)),
        )
        .optional()?)
}

fn in_progress_for(conn: &Connection, snap: &str) -> Result<Option<ChangeId>> {
    Ok(conn
        .query_row(
            "SELECT id FROM changes WHERE snap = ?1 AND ready_time IS NULL",
            [snap],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|id| id as ChangeId))
}

fn collect<T>(rows: impl Iterator<Item = rusqlite::Result<Result<T>>>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for r in rows {
        out.push(r??);
    }
    Ok(out)
}

const SNAP_COLS: &str =
    "name, snap_name, instance_key, current, channel, hold, settings, installed";
const REV_COLS: &str = "snap, revision, version, summary, sha3_384, size, manifest, added";
const CHANGE_COLS: &str = "id, kind, summary, snap, data, spawn_time, ready_time, abort_requested";
const TASK_COLS: &str = "id, change_id, seq, kind, summary, status, data, waits_for, log, \
     progress_label, progress_done, progress_total, retry_count, retry_reason, wait_until, \
     wait_event, wait_reason, spawn_time, ready_time";

fn snap_from_row(r: &Row<'_>) -> rusqlite::Result<Result<SnapRow>> {
    let settings: String = r.get(6)?;
    Ok((|| {
        Ok(SnapRow {
            name: r.get(0)?,
            snap_name: r.get(1)?,
            instance_key: r.get(2)?,
            current: r.get(3)?,
            channel: r.get(4)?,
            hold: r.get(5)?,
            settings: serde_json::from_str(&settings)?,
            installed: r.get(7)?,
        })
    })())
}

fn rev_from_row(r: &Row<'_>) -> rusqlite::Result<RevisionRow> {
    Ok(RevisionRow {
        snap: r.get(0)?,
        revision: r.get(1)?,
        version: r.get(2)?,
        summary: r.get(3)?,
        sha3_384: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        manifest: r.get(6)?,
        added: r.get(7)?,
    })
}

fn change_from_row(r: &Row<'_>) -> rusqlite::Result<Result<ChangeRow>> {
    let data: String = r.get(4)?;
    Ok((|| {
        Ok(ChangeRow {
            id: r.get::<_, i64>(0)? as ChangeId,
            kind: r.get(1)?,
            summary: r.get(2)?,
            snap: r.get(3)?,
            data: serde_json::from_str(&data)?,
            spawn_time: r.get(5)?,
            ready_time: r.get(6)?,
            abort_requested: r.get::<_, i64>(7)? != 0,
        })
    })())
}

fn task_from_row(r: &Row<'_>) -> rusqlite::Result<Result<TaskRow>> {
    let status: String = r.get(5)?;
    let data: String = r.get(6)?;
    let waits: String = r.get(7)?;
    let log: String = r.get(8)?;
    Ok((|| {
        Ok(TaskRow {
            id: r.get::<_, i64>(0)? as TaskId,
            change_id: r.get::<_, i64>(1)? as ChangeId,
            seq: r.get(2)?,
            kind: r.get(3)?,
            summary: r.get(4)?,
            status: status.parse()?,
            data: serde_json::from_str(&data)?,
            waits_for: serde_json::from_str(&waits)?,
            log: serde_json::from_str(&log)?,
            progress_label: r.get(9)?,
            progress_done: r.get::<_, i64>(10)? as u64,
            progress_total: r.get::<_, i64>(11)? as u64,
            retry_count: r.get(12)?,
            retry_reason: r.get(13)?,
            wait_until: r.get(14)?,
            wait_event: r.get(15)?,
            wait_reason: r.get(16)?,
            spawn_time: r.get(17)?,
            ready_time: r.get(18)?,
        })
    })())
}

#[cfg(test)]
mod tests;
