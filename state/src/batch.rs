//! Operations on several snaps at once, all or nothing: holds, and the changes of one request
//! that refreshes many snaps.
//!
//! A batch's idempotency key names several changes, while the `idempotency_keys` table maps a
//! key to one. So a batch stores one row per change it made, keyed `"KEY ID"`: a space never
//! occurs in a key the API accepts (printable ASCII without space), so these rows cannot collide
//! with a single request's key, and they go with their changes when those are pruned.

use rusqlite::{params, Connection};

use crate::{in_progress_for, insert_change, lookup_key, now_ms, ChangeId, Error};
use crate::{IdempotencyKey, NewChange, Result, State};

/// What became of one change of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchItem {
    /// The change was made.
    Created(ChangeId),
    /// Its snap has this unfinished change already; nothing was made for it.
    Busy(ChangeId),
}

/// The rows a batch's key left: (request, change, the change's snap), oldest first.
pub(crate) fn lookup(
    conn: &Connection,
    uid: u32,
    key: &str,
) -> Result<Vec<(String, ChangeId, Option<String>)>> {
    // Every key starting with "KEY " sorts at or after "KEY " and before "KEY!" ('!' follows ' ').
    let mut st = conn.prepare_cached(
        "SELECT k.request, k.change_id, c.snap FROM idempotency_keys k
           JOIN changes c ON c.id = k.change_id
         WHERE k.uid = ?1 AND k.key >= ?2 AND k.key < ?3 ORDER BY k.change_id",
    )?;
    let rows = st.query_map(params![uid, format!("{key} "), format!("{key}!")], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as ChangeId,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

impl State {
    /// The changes an earlier batch made with this key: (request, change, snap). Empty when the
    /// key made none (or was never used for a batch).
    pub fn idempotency_batch(
        &self,
        uid: u32,
        key: &str,
    ) -> Result<Vec<(String, ChangeId, Option<String>)>> {
        lookup(&self.conn, uid, key)
    }

    /// Creates several changes in one transaction, one [`BatchItem`] per entry of `news` in
    /// order. A snap with an unfinished change is skipped ([`BatchItem::Busy`]), not an error for
    /// the others. With a key an earlier batch used, creates nothing and returns
    /// `Err(`[`Error::KeyReused`]`)` if that was another kind of request, else the earlier
    /// changes as [`BatchItem::Created`].
    pub fn create_changes(
        &mut self,
        news: &[NewChange],
        key: Option<IdempotencyKey<'_>>,
    ) -> Result<Vec<BatchItem>> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        if let Some(k) = key {
            let earlier = lookup(&tx, k.uid, k.key)?;
            let other = lookup_key(&tx, k.uid, k.key)?
                .map(|(request, _)| request)
                .or_else(|| {
                    earlier
                        .iter()
                        .find(|(request, ..)| request != k.request)
                        .map(|(request, ..)| request.clone())
                });
            if let Some(request) = other {
                return Err(Error::KeyReused {
                    key: k.key.to_owned(),
                    request,
                });
            }
            if !earlier.is_empty() {
                return Ok(earlier
                    .into_iter()
                    .map(|(_, id, _)| BatchItem::Created(id))
                    .collect());
            }
        }
        let mut out = Vec::with_capacity(news.len());
        for new in news {
            if let Some(snap) = &new.snap {
                if let Some(change) = in_progress_for(&tx, snap)? {
                    out.push(BatchItem::Busy(change));
                    continue;
                }
            }
            let change = insert_change(&tx, new, now)?;
            if let Some(k) = key {
                tx.execute(
                    "INSERT INTO idempotency_keys (uid, key, request, change_id, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![k.uid, format!("{} {change}", k.key), k.request, change as i64, now],
                )?;
            }
            out.push(BatchItem::Created(change));
        }
        tx.commit()?;
        Ok(out)
    }

    /// Sets the hold of every snap in `names` (`"forever"` or an RFC 3339 time; `None` lifts
    /// it), all or none: when a name is not installed nothing changes, and the names missing
    /// are returned.
    pub fn set_holds(&mut self, names: &[String], hold: Option<&str>) -> Result<Vec<String>> {
        let tx = self.conn.transaction()?;
        let mut missing = vec![];
        for name in names {
            let n = tx.execute(
                "UPDATE snaps SET hold = ?2 WHERE name = ?1",
                params![name, hold],
            )?;
            if n == 0 {
                missing.push(name.clone());
            }
        }
        if missing.is_empty() {
            tx.commit()?;
        }
        // Dropping the transaction otherwise rolls it back.
        Ok(missing)
    }
}
