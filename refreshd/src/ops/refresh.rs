//! Refreshing snaps: one named, several, or every snap with an update (what `refreshctl
//! refresh` and auto-refresh ask for), what such a refresh would do, and holds.

use std::collections::HashMap;

use jiff::Timestamp;
use refreshd_client::types::{
    HoldUntil, NoteKind, RefreshNote, RefreshPlan, RefreshResult, Update,
};
use refreshd_snap::text::{printable, quote};
use refreshd_snap::{InstanceName, Revision};
use refreshd_state::{BatchItem, ChangeId, IdempotencyKey, SnapRow};
use refreshd_store::Entry;
use tracing::info;

use super::store::{replayed, store_setup};
use super::{OpError, Ops, Result};

/// What an idempotency key of a refresh of several snaps is recorded as.
const REQUEST: &str = "refresh-many";

/// An update to make, as decided before the store's answer is acted on.
struct Planned {
    instance: InstanceName,
    entry: Entry,
    channel: String,
    named: bool,
}

/// What became of a planned update in the transaction that makes it.
enum Outcome {
    /// A change (or the snap's change in progress) replaces revision `from` (`version`).
    Made {
        from: String,
        version: String,
        hold: Option<HoldUntil>,
    },
    /// Not made, and why.
    Note(NoteKind, String),
}

/// An installed snap, as a refresh of several sees it.
struct Candidate {
    row: SnapRow,
    instance: InstanceName,
    current: String,
    version: String,
    /// Named in the request: refreshed even if held, and a local revision may go back to
    /// the store (as `refreshctl refresh NAME` does).
    named: bool,
    /// An unexpired hold.
    hold: Option<HoldUntil>,
    /// The snap's unfinished change.
    busy: Option<ChangeId>,
    /// The revisions kept here and their sha3-384.
    kept: Vec<(String, String)>,
    /// The channel asked for, instead of the snap's (one snap named).
    switch_to: Option<String>,
}

impl Candidate {
    fn name(&self) -> &str {
        &self.row.name
    }

    /// The channel to look in: the one asked for, else the snap's; a named snap installed
    /// from a file follows `stable`, like `refreshctl refresh NAME`.
    fn channel(&self) -> Option<String> {
        if let Some(c) = &self.switch_to {
            return Some(c.clone());
        }
        match &self.row.channel {
            Some(c) => Some(c.clone()),
            None if self.named => Some("stable".to_owned()),
            None => None,
        }
    }

    fn note(&self, kind: NoteKind, message: String) -> RefreshNote {
        RefreshNote {
            snap: self.name().to_owned(),
            kind,
            message,
            change: None,
            hold: None,
        }
    }

    /// Why this snap is not looked up in the store, if it is not: it does not come from one.
    fn not_from_store(&self) -> Option<RefreshNote> {
        let n = self.name();
        if self.channel().is_none() {
            return Some(self.note(
                NoteKind::NotFromStore,
                format!("{n}: installed from a file, it follows no store channel; skipped"),
            ));
        }
        let local = self
            .current
            .parse::<Revision>()
            .is_ok_and(Revision::is_local);
        if local && !self.named {
            return Some(self.note(
                NoteKind::NotFromStore,
                format!(
                    "{n}: revision {} was installed from a file; skipped (refreshctl refresh {n} goes back to the store's)",
                    self.current
                ),
            ));
        }
        None
    }

    /// Why the update `entry` is not made now, if it is not: the snap has a change in
    /// progress, or it is held and was not named.
    fn held_back(&self, entry: &Entry) -> Option<RefreshNote> {
        let n = self.name();
        let update = format!("revision {} ({})", entry.revision, entry.version);
        if let Some(change) = self.busy {
            return Some(busy(self, change, &update));
        }
        match self.hold {
            Some(hold) if !self.named => {
                let mut note = self.note(NoteKind::Held, held(n, hold, entry));
                note.hold = Some(hold.to_string());
                Some(note)
            }
            _ => None,
        }
    }
}

fn busy(c: &Candidate, change: ChangeId, update: &str) -> RefreshNote {
    let n = c.name();
    let mut note = c.note(
        NoteKind::Busy,
        format!("{n}: change {change} is in progress; skipped {update} (refreshctl watch {change} follows it)"),
    );
    note.change = Some(change);
    note
}

/// Why the update `entry` of snap `n`, held (`hold`), was not made.
fn held(n: &str, hold: HoldUntil, entry: &Entry) -> String {
    format!(
        "{n}: refreshes are held {}; skipped revision {} ({}) (refreshctl refresh --unhold {n} lifts the hold)",
        describe(hold),
        entry.revision,
        entry.version
    )
}

/// `until 2026-11-21T21:45:03Z`, `forever` or `since its revert`.
fn describe(hold: HoldUntil) -> String {
    match hold {
        HoldUntil::Forever => "forever".to_owned(),
        HoldUntil::Time(t) => format!("until {t:.3}"),
        HoldUntil::Reverted => "since its revert".to_owned(),
    }
}

/// What the store has for a candidate.
enum Looked {
    Update(Entry),
    /// Not an update (up to date, or an older revision), or the store could not say.
    Note(RefreshNote),
}

/// Checks names (unknown ones fail the whole request: nothing may be half done) and reads
/// every snap to consider: those named, or every installed one.
async fn candidates(ops: &Ops, names: &[String]) -> Result<Vec<Candidate>> {
    let mut wanted: Vec<String> = vec![];
    for name in names {
        name.parse::<InstanceName>()
            .map_err(|e: refreshd_snap::NameError| OpError::Invalid(e.to_string()))?;
        // A name given twice still makes one change.
        if !wanted.contains(name) {
            wanted.push(name.clone());
        }
    }
    let now = Timestamp::now();
    let named = !wanted.is_empty();
    let (rows, missing) = ops
        .read(move |s| {
            let mut rows = vec![];
            let mut missing = vec![];
            if named {
                for name in &wanted {
                    match s.snap(name)?.filter(|r| r.current.is_some()) {
                        Some(row) => rows.push(row),
                        None => missing.push(name.clone()),
                    }
                }
            } else {
                rows = s
                    .snaps()?
                    .into_iter()
                    .filter(|r| r.current.is_some())
                    .collect();
            }
            let mut found = vec![];
            for row in rows {
                let current = row.current.clone().unwrap_or_default();
                let version = s
                    .revision(&row.name, &current)?
                    .map(|r| r.version)
                    .unwrap_or_default();
                let busy = s.change_in_progress_for(&row.name)?;
                let kept = s
                    .revisions(&row.name)?
                    .into_iter()
                    .map(|r| (r.revision, r.sha3_384))
                    .collect::<Vec<_>>();
                found.push((row, current, version, busy, kept));
            }
            Ok::<_, refreshd_state::Error>((found, missing))
        })
        .await?;
    if !missing.is_empty() {
        let quoted: Vec<String> = missing.iter().map(|n| quote(n)).collect();
        let (what, be) = if quoted.len() == 1 {
            ("snap", "is")
        } else {
            ("snaps", "are")
        };
        return Err(OpError::NotFound(format!(
            "{what} {} {be} not installed; nothing was done (refreshctl list shows what is)",
            quoted.join(", ")
        )));
    }
    let mut out = vec![];
    for (row, current, version, busy, kept) in rows {
        let instance: InstanceName = row
            .name
            .parse()
            .map_err(|e: refreshd_snap::NameError| OpError::Internal(e.to_string()))?;
        let hold = HoldUntil::active(row.hold.as_deref(), now);
        out.push(Candidate {
            row,
            instance,
            current,
            version,
            named,
            hold,
            busy,
            kept,
            switch_to: None,
        });
    }
    Ok(out)
}

/// Looks every candidate up in the store, reading each snap's index once.
async fn look_up(ops: &Ops, cands: &[&Candidate]) -> Result<Vec<Looked>> {
    let store = ops.store()?;
    let wanted: Vec<(String, String)> = cands
        .iter()
        .map(|c| {
            let channel = c.channel().unwrap_or_default();
            (c.instance.snap_name().to_owned(), channel)
        })
        .collect();
    let url = store.url().to_owned();
    // One worker for the whole look-up: a silent store holds it (up to --store-timeout per
    // snap), never more than one.
    let found = ops
        .workers
        .run(move || {
            // A signed store's metadata is verified once for the whole look-up. The store's
            // errors are one line whose untrusted parts are quoted and capped already: capping
            // the whole (one_line) would cut off the advice they end with.
            let said = |e: refreshd_store::Error| printable(&e.to_string()).into_owned();
            let catalog = store.catalog().map_err(said);
            let mut indexes = HashMap::new();
            wanted
                .into_iter()
                .map(|(snap, channel)| {
                    let index = indexes
                        .entry(snap.clone())
                        .or_insert_with(|| match &catalog {
                            Ok(c) => c.snap(&snap).map_err(said),
                            Err(e) => Err(e.clone()),
                        });
                    let entry = match index {
                        Err(e) => Err(format!("cannot read the store: {e}")),
                        Ok(None) => Err(format!("snap {snap} is not in the store {url}")),
                        Ok(Some(index)) => index.channel(&channel).cloned().ok_or_else(|| {
                            format!("the store has no revision of {snap} in channel {channel}")
                        }),
                    };
                    (entry, channel)
                })
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(cands
        .iter()
        .zip(found)
        .map(|(c, (entry, channel))| {
            let n = c.name();
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return Looked::Note(c.note(NoteKind::Error, format!("{n}: {e}"))),
            };
            match judge(n, &c.current, &c.kept, &entry, &channel) {
                Some((kind, message)) => Looked::Note(c.note(kind, message)),
                None => Looked::Update(entry),
            }
        })
        .collect())
}

/// Why `entry`, the revision channel `channel` offers, is no update of snap `n` whose current
/// revision is `current` and which keeps `kept` (revision, sha3-384): None when it is one.
fn judge(
    n: &str,
    current: &str,
    kept: &[(String, String)],
    entry: &Entry,
    channel: &str,
) -> Option<(NoteKind, String)> {
    let replay = kept
        .iter()
        .find(|(r, sha)| *r == entry.revision.to_string() && *sha != entry.sha3_384);
    if let Some((_, sha)) = replay {
        return Some((NoteKind::Error, format!("{n}: {}", replayed(n, entry, sha))));
    }
    match current.parse::<Revision>() {
        Ok(Revision::Store(cur)) if entry.revision == cur => Some((
            NoteKind::UpToDate,
            format!("snap {n} has no updates available (revision {cur} is the newest in channel {channel})"),
        )),
        // Not quietly up to date: a channel that went back is the store's mistake or a
        // rollback attack, and this snap no longer follows it.
        Ok(Revision::Store(cur)) if entry.revision < cur => Some((
            NoteKind::Error,
            format!(
                "{n}: the store offers revision {}, older than the installed {cur}; not an update (reverting is a separate, explicit action)",
                entry.revision
            ),
        )),
        _ => None,
    }
}

/// What a refresh of every snap would do: every snap whose channel has a newer revision, held
/// and busy ones included (marked); changes nothing.
pub async fn plan(ops: &Ops) -> Result<RefreshPlan> {
    let cands = candidates(ops, &[]).await?;
    let mut plan = RefreshPlan::default();
    let mut lookups = vec![];
    for c in &cands {
        match c.not_from_store() {
            Some(note) => plan.notes.push(note),
            None => lookups.push(c),
        }
    }
    for (c, looked) in lookups.iter().zip(look_up(ops, &lookups).await?) {
        match looked {
            Looked::Note(note) => plan.notes.push(note),
            Looked::Update(entry) => plan.updates.push(Update {
                name: c.name().to_owned(),
                revision: c.current.clone(),
                version: c.version.clone(),
                channel: c.channel().unwrap_or_default(),
                store_revision: entry.revision.to_string(),
                store_version: entry.version.clone(),
                hold: c.hold.map(|h| h.to_string()),
                change: c.busy,
            }),
        }
    }
    plan.notes.sort_by(|a, b| a.snap.cmp(&b.snap));
    Ok(plan)
}

/// Makes one refresh change per snap in `names`, or per snap with an update when `names` is
/// empty (held snaps skipped; a named snap is refreshed even if held). A snap with a change in
/// progress is skipped, not an error for the others; an unknown name fails the whole request
/// before anything is made. `channel` (with exactly one name) refreshes from that channel,
/// which the snap follows from then on. With an idempotency key, a repeat answers with the
/// changes the first attempt made. Every refresh, of one snap or many, asked for or
/// automatic, is made here.
pub async fn refresh_snaps(
    ops: &Ops,
    uid: u32,
    key: Option<String>,
    names: &[String],
    channel: Option<&str>,
) -> Result<RefreshResult> {
    if let Some(ch) = channel {
        if names.len() != 1 {
            return Err(OpError::Invalid(
                "a channel goes with exactly one snap name; refresh the others separately".into(),
            ));
        }
        refreshd_store::validate_channel(ch).map_err(|e| OpError::Invalid(e.to_string()))?;
    }
    if let Some(k) = &key {
        let k2 = k.clone();
        // Only read here: the writer is for making changes.
        let earlier = ops
            .read(move |s| {
                if let Some((request, _)) = s.idempotency_key(uid, &k2)? {
                    return Err(refreshd_state::Error::KeyReused { key: k2, request });
                }
                s.idempotency_batch(uid, &k2)
            })
            .await?;
        if let Some((request, ..)) = earlier.iter().find(|(r, ..)| r != REQUEST) {
            return Err(refreshd_state::Error::KeyReused {
                key: k.clone(),
                request: request.clone(),
            }
            .into());
        }
        if !earlier.is_empty() {
            return Ok(retried(earlier));
        }
    }
    ops.open_for_work()?;
    let store = ops.store()?;
    let mut cands = candidates(ops, names).await?;
    if let (Some(ch), [c]) = (channel, &mut cands[..]) {
        c.switch_to = Some(ch.to_owned());
    }

    // One note per candidate, in order; updates fill theirs in once their change exists.
    let mut notes: Vec<Option<RefreshNote>> = vec![None; cands.len()];
    let mut lookups = vec![];
    for (i, c) in cands.iter().enumerate() {
        match c.not_from_store() {
            Some(note) => notes[i] = Some(note),
            None => lookups.push(i),
        }
    }
    let looked = look_up(ops, &lookups.iter().map(|&i| &cands[i]).collect::<Vec<_>>()).await?;
    let mut updates = vec![];
    for (i, looked) in lookups.into_iter().zip(looked) {
        match looked {
            Looked::Note(note) => notes[i] = Some(note),
            Looked::Update(entry) => match cands[i].held_back(&entry) {
                Some(note) => notes[i] = Some(note),
                None => updates.push((i, entry)),
            },
        }
    }

    // What each update is made from is read again in the transaction that makes it: a snap
    // refreshed, reverted or removed since it was looked at gets its change from what it is now
    // (or a note), never from the picture taken before the store answered.
    let planned: Vec<Planned> = updates
        .iter()
        .map(|(i, entry)| {
            let c = &cands[*i];
            Planned {
                instance: c.instance.clone(),
                entry: entry.clone(),
                channel: c.channel().unwrap_or_default(),
                named: c.named,
            }
        })
        .collect();
    let url = store.url().to_owned();
    let made = if planned.is_empty() {
        Ok(vec![])
    } else {
        ops.write(move |s| {
            // The same request, retried while this one looked at the store, got through
            // first: its answer is this one's.
            if let Some(k) = &key {
                let earlier = s.idempotency_batch(uid, k)?;
                if !earlier.is_empty() {
                    return Ok(Err(earlier));
                }
            }
            let now = Timestamp::now();
            let mut outcomes = vec![];
            let mut batch = vec![];
            for p in &planned {
                let name = p.instance.as_str();
                let Some(row) = s.snap(name)?.filter(|r| r.current.is_some()) else {
                    outcomes.push(Outcome::Note(
                        NoteKind::Busy,
                        format!("{name}: removed while refreshd was checking it; skipped"),
                    ));
                    continue;
                };
                let current = row.current.clone().unwrap_or_default();
                let kept: Vec<(String, String)> = s
                    .revisions(name)?
                    .into_iter()
                    .map(|r| (r.revision, r.sha3_384))
                    .collect();
                if let Some((kind, message)) = judge(name, &current, &kept, &p.entry, &p.channel) {
                    outcomes.push(Outcome::Note(kind, message));
                    continue;
                }
                let hold = HoldUntil::active(row.hold.as_deref(), now);
                if let (Some(h), false) = (hold, p.named) {
                    outcomes.push(Outcome::Note(NoteKind::Held, held(name, h, &p.entry)));
                    continue;
                }
                let version = s
                    .revision(name, &current)?
                    .map(|r| r.version)
                    .unwrap_or_default();
                let ss = store_setup(
                    &p.instance,
                    Some(current.clone()),
                    &p.entry,
                    p.channel.clone(),
                    &url,
                );
                batch.push(crate::tasks::install_change(&ss));
                outcomes.push(Outcome::Made {
                    from: current,
                    version,
                    hold,
                });
            }
            let key = key.as_deref().map(|k| IdempotencyKey {
                uid,
                key: k,
                request: REQUEST,
            });
            let mut made = s.create_changes(&batch, key)?.into_iter();
            let mut items = vec![];
            for (p, o) in planned.iter().zip(outcomes) {
                let item = matches!(o, Outcome::Made { .. })
                    .then(|| made.next())
                    .flatten();
                // A refresh that names a reverted snap ends the hold its revert put on it.
                if p.named && matches!(item, Some(BatchItem::Created(_))) {
                    s.lift_revert_hold(p.instance.as_str())?;
                }
                items.push((o, item));
            }
            Ok::<_, refreshd_state::Error>(Ok(items))
        })
        .await?
    };
    let items = match made {
        Ok(items) => items,
        Err(earlier) => return Ok(retried(earlier)),
    };

    let mut result = RefreshResult::default();
    for ((i, entry), item) in updates.iter().zip(items) {
        let c = &cands[*i];
        let n = c.name();
        notes[*i] = Some(match item {
            (
                Outcome::Made {
                    from,
                    version,
                    hold,
                },
                Some(BatchItem::Created(id)),
            ) => {
                result.changes.push(id);
                let mut message = format!(
                    "{n}: refreshing from {from} ({version}) to {} ({}) (change {id})",
                    entry.revision, entry.version
                );
                if let Some(hold) = hold {
                    message.push_str(&format!("; it is held {}, but was named", describe(hold)));
                }
                let mut note = c.note(NoteKind::Refreshing, message);
                note.change = Some(id);
                note.hold = hold.map(|h| h.to_string());
                note
            }
            (Outcome::Made { .. }, Some(BatchItem::Busy(id))) => busy(
                c,
                id,
                &format!("revision {} ({})", entry.revision, entry.version),
            ),
            (Outcome::Note(kind, message), _) => c.note(kind, message),
            (Outcome::Made { .. }, None) => c.note(
                NoteKind::Error,
                format!("{n}: refreshd lost track of its change; see its log"),
            ),
        });
    }
    result.notes = notes.into_iter().flatten().collect();
    if !result.changes.is_empty() {
        ops.engine.ensure();
    }
    Ok(result)
}

/// The answer to a retry of a request that got through: the changes it made, nothing new.
fn retried(earlier: Vec<(String, ChangeId, Option<String>)>) -> RefreshResult {
    let mut result = RefreshResult::default();
    for (_, id, snap) in earlier {
        let snap = snap.unwrap_or_default();
        result.changes.push(id);
        result.notes.push(RefreshNote {
            message: format!("{snap}: refreshing (change {id})"),
            snap,
            kind: NoteKind::Refreshing,
            change: Some(id),
            hold: None,
        });
    }
    result
}

/// Holds (`until` set) or unholds the snaps in `names`, every installed snap when empty; all
/// or none. Returns the names of those snaps.
pub async fn set_holds(
    ops: &Ops,
    names: Vec<String>,
    until: Option<HoldUntil>,
) -> Result<Vec<String>> {
    for name in &names {
        name.parse::<InstanceName>()
            .map_err(|e: refreshd_snap::NameError| OpError::Invalid(e.to_string()))?;
    }
    let value = until.map(|u| u.to_string());
    let (names, missing) = ops
        .write(move |s| {
            let names: Vec<String> = if names.is_empty() {
                s.snaps()?
                    .into_iter()
                    .filter(|r| r.current.is_some())
                    .map(|r| r.name)
                    .collect()
            } else {
                names
            };
            // A snap being installed has a row but no current revision yet: not installed.
            let mut missing: Vec<String> = vec![];
            for n in &names {
                if s.snap(n)?.and_then(|r| r.current).is_none() {
                    missing.push(n.clone());
                }
            }
            if missing.is_empty() {
                missing = s.set_holds(&names, value.as_deref())?;
            }
            Ok::<_, refreshd_state::Error>((names, missing))
        })
        .await?;
    if !missing.is_empty() {
        let quoted: Vec<String> = missing.iter().map(|n| quote(n)).collect();
        return Err(OpError::NotFound(format!(
            "not installed: {}; no hold was changed (refreshctl list shows what is)",
            quoted.join(", ")
        )));
    }
    match until {
        Some(u) => info!(snaps = ?names, "refreshes held {}", describe(u)),
        None => info!(snaps = ?names, "holds lifted"),
    }
    Ok(names)
}
