//! What a remove saved of a snap's data: one row per set. The data itself lives beside the
//! snap's own (docs/layout.md, "Snapshots"); the row is what makes it a snapshot.

use rusqlite::{params, OptionalExtension, Row};

use crate::{Result, State};

/// One saved set of a snap's data (system and users').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// The set: the id of the change that saved it.
    pub id: u64,
    pub snap: String,
    /// The revision whose data it holds.
    pub revision: String,
    pub version: String,
    /// The users whose data it holds.
    pub users: Vec<u32>,
    /// Unix ms.
    pub made: i64,
    /// Unix ms; None: kept until forgotten.
    pub expires: Option<i64>,
}

const COLS: &str = "id, snap, revision, version, users, made, expires";

fn from_row(r: &Row) -> rusqlite::Result<SnapshotRow> {
    let users: String = r.get(4)?;
    Ok(SnapshotRow {
        id: r.get(0)?,
        snap: r.get(1)?,
        revision: r.get(2)?,
        version: r.get(3)?,
        // Written by `put_snapshot` alone: a list it cannot read is an empty one.
        users: serde_json::from_str(&users).unwrap_or_default(),
        made: r.get(5)?,
        expires: r.get(6)?,
    })
}

impl State {
    /// Records a set, or updates every column of an existing one (a restore swaps what it holds).
    pub fn put_snapshot(&mut self, s: &SnapshotRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO snapshots (id, snap, revision, version, users, made, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET snap = excluded.snap, revision = excluded.revision,
               version = excluded.version, users = excluded.users, made = excluded.made,
               expires = excluded.expires",
            params![
                s.id,
                s.snap,
                s.revision,
                s.version,
                serde_json::to_string(&s.users)?,
                s.made,
                s.expires
            ],
        )?;
        Ok(())
    }

    pub fn snapshot(&self, id: u64) -> Result<Option<SnapshotRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {COLS} FROM snapshots WHERE id = ?1"))?;
        Ok(st.query_row([id], from_row).optional()?)
    }

    /// Every set, oldest first; only `snap`'s when given.
    pub fn snapshots(&self, snap: Option<&str>) -> Result<Vec<SnapshotRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLS} FROM snapshots WHERE ?1 IS NULL OR snap = ?1 ORDER BY id"
        ))?;
        let rows = st.query_map([snap], from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The sets expired at `now` (unix ms).
    pub fn expired_snapshots(&self, now: i64) -> Result<Vec<SnapshotRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLS} FROM snapshots WHERE expires IS NOT NULL AND expires <= ?1 ORDER BY id"
        ))?;
        let rows = st.query_map([now], from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// When the next set expires (unix ms), if any does.
    pub fn next_snapshot_expiry(&self) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT min(expires) FROM snapshots", [], |r| r.get(0))?)
    }

    pub fn delete_snapshot(&mut self, id: u64) -> Result<()> {
        self.conn
            .execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
        Ok(())
    }
}
