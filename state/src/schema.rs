//! Forward-only schema migrations.
//!
//! `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`; `PRAGMA user_version` records
//! the version. A migration is never edited once released: a change of schema is a new entry,
//! so a database written by any older refreshd opens with any newer one.

use rusqlite::Connection;

use crate::Error;

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE snaps (
        name          TEXT PRIMARY KEY,          -- instance name: "foo" or "foo_key"
        snap_name     TEXT NOT NULL,
        instance_key  TEXT,
        current       TEXT,                      -- revision linked as current; NULL while not linked
        channel       TEXT,
        hold          TEXT,                      -- "forever" or an RFC 3339 time; NULL when not held
        settings      TEXT NOT NULL DEFAULT '{}',-- JSON object
        installed     INTEGER NOT NULL           -- unix ms
    ) STRICT;

    CREATE TABLE revisions (
        snap      TEXT NOT NULL REFERENCES snaps(name) ON DELETE CASCADE,
        revision  TEXT NOT NULL,                 -- "7" (store) or "x7" (local)
        version   TEXT NOT NULL,
        summary   TEXT,
        sha3_384  TEXT NOT NULL,
        size      INTEGER NOT NULL,
        manifest  TEXT NOT NULL,                 -- meta/snap.yaml as found in the image
        added     INTEGER NOT NULL,
        PRIMARY KEY (snap, revision)
    ) STRICT;

    CREATE TABLE changes (
        id               INTEGER PRIMARY KEY,
        kind             TEXT NOT NULL,
        summary          TEXT NOT NULL,
        snap             TEXT,                   -- the snap this change touches, if any
        data             TEXT NOT NULL DEFAULT '{}',
        spawn_time       INTEGER NOT NULL,
        ready_time       INTEGER,                -- set once no task can make progress
        abort_requested  INTEGER NOT NULL DEFAULT 0
    ) STRICT;

    -- At most one unfinished change per snap, enforced by the database itself so that two
    -- requests racing through the API cannot both win.
    CREATE UNIQUE INDEX changes_one_per_snap ON changes(snap)
        WHERE ready_time IS NULL AND snap IS NOT NULL;
    CREATE INDEX changes_ready ON changes(ready_time);

    CREATE TABLE tasks (
        id              INTEGER PRIMARY KEY,
        change_id       INTEGER NOT NULL REFERENCES changes(id) ON DELETE CASCADE,
        seq             INTEGER NOT NULL,        -- position in the change, for display
        kind            TEXT NOT NULL,
        summary         TEXT NOT NULL,
        status          TEXT NOT NULL,
        data            TEXT NOT NULL DEFAULT '{}',
        waits_for       TEXT NOT NULL DEFAULT '[]', -- JSON array of task ids: the ordering graph
        log             TEXT NOT NULL DEFAULT '[]', -- JSON array of lines
        progress_label  TEXT NOT NULL DEFAULT '',
        progress_done   INTEGER NOT NULL DEFAULT 0,
        progress_total  INTEGER NOT NULL DEFAULT 0,
        retry_count     INTEGER NOT NULL DEFAULT 0,
        retry_reason    TEXT,
        wait_until      INTEGER,                 -- unix ms: not to be run before
        wait_event      TEXT,                    -- event a Wait task is parked on
        wait_reason     TEXT,
        spawn_time      INTEGER NOT NULL,
        ready_time      INTEGER
    ) STRICT;
    CREATE INDEX tasks_change ON tasks(change_id, seq);
    CREATE INDEX tasks_wait_event ON tasks(wait_event) WHERE wait_event IS NOT NULL;

    CREATE TABLE idempotency_keys (
        uid        INTEGER NOT NULL,
        key        TEXT NOT NULL,
        request    TEXT NOT NULL,               -- what the key was used for, e.g. "install"
        change_id  INTEGER NOT NULL REFERENCES changes(id) ON DELETE CASCADE,
        created    INTEGER NOT NULL,
        PRIMARY KEY (uid, key)
    ) STRICT;
    "#,
    // 2: daemon-wide settings (the auto-refresh schedule).
    r#"
    CREATE TABLE settings (
        key    TEXT PRIMARY KEY,                -- a dotted name, e.g. "auto-refresh.last"
        value  TEXT NOT NULL
    ) STRICT;
    "#,
    // 3: what a remove saved of a snap's data (docs/layout.md, "Snapshots").
    r#"
    CREATE TABLE snapshots (
        id        INTEGER PRIMARY KEY,          -- the set: the id of the change that saved it
        snap      TEXT NOT NULL,                -- instance name
        revision  TEXT NOT NULL,                -- the revision whose data it holds
        version   TEXT NOT NULL,
        users     TEXT NOT NULL DEFAULT '[]',   -- JSON array of the uids whose data it holds
        made      INTEGER NOT NULL,             -- unix ms
        expires   INTEGER                       -- unix ms; NULL: kept until forgotten
    ) STRICT;
    CREATE INDEX snapshots_expires ON snapshots(expires) WHERE expires IS NOT NULL;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub(crate) fn version(conn: &Connection) -> Result<u32, Error> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings `conn` up to `target` (normally [`SCHEMA_VERSION`]), one transaction per step so an
/// interrupted upgrade leaves a consistent older version behind.
pub(crate) fn migrate_to(conn: &mut Connection, target: u32) -> Result<(), Error> {
    let found = version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(Error::TooNew {
            path: conn.path().unwrap_or_default().into(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for v in found..target {
        let tx = conn.transaction()?;
        tx.execute_batch(MIGRATIONS[v as usize])?;
        tx.pragma_update(None, "user_version", v + 1)?;
        tx.commit()?;
    }
    Ok(())
}
