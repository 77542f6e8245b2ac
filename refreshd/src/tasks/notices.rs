//! What a refresh tells logged-in desktop users, and the record that makes it once per pending
//! refresh (docs/notifications.md).
//!
//! `wait-for-apps`, when it parks because apps run, tells each user with a session bus that the
//! snap will be updated when it is closed; `lift-inhibition` tells the same users that it was
//! (and, undone because a later task failed, that it was not after all).
//! Who was told, and when, is written into the task's data before the notice goes out: a
//! restart, a crash or any later look of the same task finds the record and says nothing again
//! (at most once: a crash between the record and the delivery loses that notice, it never
//! doubles it). With `refreshd --notify-reminder EVERY` a user still logged in is reminded at
//! most that often while the refresh waits.

use std::collections::BTreeMap;

use super::data::{self, Told, ToldUsers};
use super::{Ctx, SnapSetup};
use crate::engine::{Outcome, TaskCtx};
use crate::kinds::{ChangeKind, TaskKind};
use crate::notify::{Notice, Session, Urgency};

/// Reminders due within this much of each other are sent in one look, so waiting refreshes
/// share their wake-ups.
const REMINDER_GRID_MS: i64 = 60_000;

/// Called by wait-for-apps when it parks with apps running: tells the users not told yet (and,
/// with a reminder policy, those told long enough ago), records it, and returns `out` with its
/// wake-up time brought forward to the next reminder due, if any. Never fails: a notice is not
/// worth a refresh.
pub fn pending(c: &Ctx, t: &TaskCtx, ss: &SnapSetup, procs: usize, out: Outcome) -> Outcome {
    let n = &c.notify;
    if !n.enabled() {
        return out;
    }
    let name = &ss.instance;
    // The refresh-pending hook may just have made the app exit: then the snap's idle event
    // wakes the task, and telling anyone to close it would be noise.
    let procs = match c.tracking.procs(name) {
        Ok(p) if p.is_empty() => return out,
        Ok(p) => p.len(),
        Err(_) => procs,
    };
    let sessions = n.sessions();
    let mut data: data::WaitForApps = t.data();
    let told = &mut data.told;
    let now = refreshd_state::now_ms();
    let plan = plan(&sessions, told, now, n.reminder.map(as_ms));
    let first_look = n.first_look(t.change.id);
    if !plan.first.is_empty() || !plan.remind.is_empty() {
        for s in &plan.first {
            told.insert(
                s.uid.to_string(),
                Told {
                    at: now,
                    reminders: 0,
                },
            );
        }
        for s in &plan.remind {
            let r = told.entry(s.uid.to_string()).or_default();
            r.at = now;
            r.reminders += 1;
        }
        // Recorded before it is sent: at most once.
        t.record(&data);
        if !plan.first.is_empty() {
            t.log(format!(
                "telling {}: {name} will be updated when it is closed",
                list(&plan.first)
            ));
            n.post(plan.first.clone(), pending_notice(ss, procs, false), name);
        }
        if !plan.remind.is_empty() {
            t.log(format!(
                "reminding {}: {name} is still waiting to be closed",
                list(&plan.remind)
            ));
            n.post(plan.remind.clone(), pending_notice(ss, procs, true), name);
        }
    }
    if first_look && !plan.already.is_empty() {
        // Once per daemon run: a restart or a crash does not tell them again.
        t.log(format!(
            "{} told already that {name} is pending: not again",
            list(&plan.already)
        ));
    }
    match (out, plan.next_reminder) {
        (
            Outcome::Wait {
                event,
                until,
                reason,
            },
            Some(due),
        ) => Outcome::Wait {
            event,
            until: Some(until.map_or(due, |u| u.min(due))),
            reason,
        },
        (out, _) => out,
    }
}

/// Called by lift-inhibition once the new revision is linked: tells the users who were told the
/// refresh is pending (and are still logged in) that it is done. Once per change.
pub fn done(c: &Ctx, t: &TaskCtx, ss: &SnapSetup) {
    let n = &c.notify;
    if !n.enabled() {
        return;
    }
    let mut data: data::LiftInhibition = t.data();
    if data.done.is_some() {
        return;
    }
    let told: BTreeMap<String, Told> = t
        .db_with(|s| s.tasks(t.change.id))
        .ok()
        .into_iter()
        .flatten()
        .filter(|task| TaskKind::WaitForApps.is(&task.kind))
        .find_map(|task| serde_json::from_value::<data::WaitForApps>(task.data).ok())
        .map(|w| w.told)
        .unwrap_or_default();
    if told.is_empty() {
        return;
    }
    let to: Vec<Session> = n
        .sessions()
        .into_iter()
        .filter(|s| told.contains_key(&s.uid.to_string()))
        .collect();
    let uids: Vec<u32> = to.iter().map(|s| s.uid).collect();
    data.done = Some(ToldUsers {
        uids,
        at: refreshd_state::now_ms(),
    });
    t.record(&data);
    let name = &ss.instance;
    if to.is_empty() {
        t.log(format!(
            "no one told that {name} was pending is still logged in: no notice that it is done"
        ));
        return;
    }
    let notice = done_notice(ss, ChangeKind::Revert.is(&t.change.kind));
    t.log(format!("telling {}: {}", list(&to), notice.summary));
    n.post(to, notice, name);
}

/// Called when lift-inhibition is undone (a later task failed, the refresh is rolled back):
/// tells those who were told it is done that it was not. Once per change.
pub fn undone(c: &Ctx, t: &TaskCtx, ss: &SnapSetup) {
    let n = &c.notify;
    if !n.enabled() {
        return;
    }
    let mut data: data::LiftInhibition = t.data();
    if data.undone.is_some() {
        return;
    }
    let Some(uids) = data.done.as_ref().map(|d| d.uids.clone()) else {
        return;
    };
    let to: Vec<Session> = n
        .sessions()
        .into_iter()
        .filter(|s| uids.contains(&s.uid))
        .collect();
    let told: Vec<u32> = to.iter().map(|s| s.uid).collect();
    data.undone = Some(ToldUsers {
        uids: told,
        at: refreshd_state::now_ms(),
    });
    t.record(&data);
    if to.is_empty() {
        return;
    }
    let back = ss.previous.as_deref().map(|prev| {
        t.db_with(|s| s.revision(&ss.instance, prev))
            .ok()
            .flatten()
            .filter(|r| !r.version.is_empty())
            .map_or_else(
                || format!("revision {prev}"),
                |r| format!("version {}", r.version),
            )
    });
    let notice = undone_notice(ss, ChangeKind::Revert.is(&t.change.kind), back.as_deref());
    t.log(format!("telling {}: {}", list(&to), notice.summary));
    n.post(to, notice, &ss.instance);
}

/// Who is told what in one look.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    first: Vec<Session>,
    remind: Vec<Session>,
    already: Vec<Session>,
    /// When the next reminder falls due (unix ms), for a user logged in now.
    next_reminder: Option<i64>,
}

fn plan(sessions: &[Session], told: &BTreeMap<String, Told>, now: i64, every: Option<i64>) -> Plan {
    let mut p = Plan::default();
    for s in sessions {
        match (told.get(&s.uid.to_string()), every) {
            (None, _) => {
                p.first.push(s.clone());
                if let Some(e) = every {
                    p.next_reminder = min(p.next_reminder, due(now, e));
                }
            }
            (Some(r), Some(e)) if now - r.at >= e => {
                p.remind.push(s.clone());
                p.next_reminder = min(p.next_reminder, due(now, e));
            }
            (Some(r), every) => {
                p.already.push(s.clone());
                if let Some(e) = every {
                    // A clock set back since they were told must not put the reminder off by
                    // as much: count from now at the latest.
                    p.next_reminder = min(p.next_reminder, due(r.at.min(now), e));
                }
            }
        }
    }
    p
}

/// The look after `at + every`, on a grid shared by every waiting refresh (a minute, or the
/// interval if shorter), so that reminders due together wake the daemon once.
fn due(at: i64, every: i64) -> i64 {
    let grid = every.clamp(1, REMINDER_GRID_MS);
    let t = at + every;
    (t + grid - 1).div_euclid(grid) * grid
}

fn min(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn as_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// `alice (uid 1000), bob (uid 1001)`.
fn list(s: &[Session]) -> String {
    s.iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn processes(n: usize) -> String {
    if n == 1 {
        "1 process still runs".to_owned()
    } else {
        format!("{n} processes still run")
    }
}

/// "hello will be updated when it is closed".
fn pending_notice(ss: &SnapSetup, procs: usize, reminder: bool) -> Notice {
    let name = &ss.instance;
    let target = if ss.version.is_empty() {
        format!("revision {}", ss.revision)
    } else {
        format!("version {}", ss.version)
    };
    let lead = if reminder {
        format!("Still waiting: {target}")
    } else {
        format!("{}{}", target[..1].to_uppercase(), &target[1..])
    };
    Notice {
        summary: format!("{name} will be updated when it is closed"),
        body: format!(
            "{lead} is ready and is installed as soon as {name} has exited ({}). \
             Nothing is closed for it, and your data is kept.",
            processes(procs)
        ),
        urgency: Urgency::Normal,
    }
}

/// "hello was updated" (or reverted).
fn done_notice(ss: &SnapSetup, revert: bool) -> Notice {
    let name = &ss.instance;
    let at = if ss.version.is_empty() {
        format!("revision {}", ss.revision)
    } else {
        format!("version {}", ss.version)
    };
    let (summary, body) = if revert {
        (
            format!("{name} was reverted"),
            format!("{name} is back at {at}."),
        )
    } else {
        (
            format!("{name} was updated"),
            format!("{name} is now at {at}; it can be started again."),
        )
    };
    Notice {
        summary,
        body,
        urgency: Urgency::Low,
    }
}

/// "hello was not updated": the refresh failed after it was said to be done.
fn undone_notice(ss: &SnapSetup, revert: bool, back: Option<&str>) -> Notice {
    let name = &ss.instance;
    let (what, verb) = if revert {
        ("revert", "reverted")
    } else {
        ("update", "updated")
    };
    let to = if ss.version.is_empty() {
        format!("revision {}", ss.revision)
    } else {
        format!("version {}", ss.version)
    };
    let back = back.map_or_else(
        || format!("{name} goes back to where it was"),
        |b| format!("{name} goes back to {b}"),
    );
    Notice {
        summary: format!("{name} was not {verb} after all"),
        body: format!("The {what} to {to} failed and is being undone: {back}."),
        urgency: Urgency::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn s(uid: u32) -> Session {
        Session {
            uid,
            gid: uid,
            user: format!("u{uid}"),
            bus: PathBuf::from(format!("/run/user/{uid}/bus")),
        }
    }

    fn told(entries: &[(u32, i64)]) -> BTreeMap<String, Told> {
        entries
            .iter()
            .map(|&(u, at)| (u.to_string(), Told { at, reminders: 0 }))
            .collect()
    }

    #[test]
    fn each_user_is_told_once_without_a_reminder_policy() {
        let p = plan(&[s(1), s(2)], &told(&[(1, 0)]), 10_000_000, None);
        assert_eq!(p.first, vec![s(2)]);
        assert_eq!(p.remind, vec![]);
        assert_eq!(p.already, vec![s(1)]);
        assert_eq!(p.next_reminder, None);
    }

    #[test]
    fn a_reminder_comes_once_the_interval_has_passed() {
        let hour = 3_600_000;
        let t0 = 1_000 * hour;
        // Told half an hour ago: not yet; due on the minute grid after t0 - 30m + 1h.
        let p = plan(&[s(1)], &told(&[(1, t0 - hour / 2)]), t0, Some(hour));
        assert_eq!(p.remind, vec![]);
        assert_eq!(p.already, vec![s(1)]);
        assert_eq!(p.next_reminder, Some(t0 + hour / 2));
        // An hour ago: now, and the next one an hour on.
        let p = plan(&[s(1)], &told(&[(1, t0 - hour)]), t0, Some(hour));
        assert_eq!(p.remind, vec![s(1)]);
        assert_eq!(p.next_reminder, Some(t0 + hour));
        // Someone new: told now, reminded an hour on.
        let p = plan(&[s(2)], &told(&[(1, t0 - hour)]), t0 + 5, Some(hour));
        assert_eq!(p.first, vec![s(2)]);
        assert_eq!(p.next_reminder, Some(t0 + hour + 60_000));
    }

    #[test]
    fn users_logged_out_set_no_reminder() {
        let p = plan(&[], &told(&[(1, 0)]), 5, Some(1_000));
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn reminders_fall_on_a_shared_grid() {
        assert_eq!(due(0, 3_600_000), 3_600_000);
        assert_eq!(due(1, 3_600_000), 3_660_000);
        assert_eq!(due(59_999, 3_600_000), 3_660_000);
        // Shorter than the grid: the interval itself is the grid.
        assert_eq!(due(2_500, 2_000), 6_000);
    }

    #[test]
    fn notices_name_the_snap_and_the_version() {
        let ss: SnapSetup = serde_json::from_value(serde_json::json!({
            "instance": "hello", "snap-name": "hello", "instance-key": null,
            "revision": "x2", "previous": "x1", "sha3-384": "", "size": 0,
            "upload": null, "manifest": "", "version": "1.1", "summary": null,
        }))
        .unwrap();
        let p = pending_notice(&ss, 2, false);
        assert_eq!(p.summary, "hello will be updated when it is closed");
        assert!(p.body.starts_with("Version 1.1 is ready"), "{}", p.body);
        assert!(p.body.contains("2 processes still run"), "{}", p.body);
        assert!(pending_notice(&ss, 1, true)
            .body
            .starts_with("Still waiting: version 1.1 is ready"));
        let d = done_notice(&ss, false);
        assert_eq!(d.summary, "hello was updated");
        assert_eq!(
            d.body,
            "hello is now at version 1.1; it can be started again."
        );
        assert_eq!(done_notice(&ss, true).summary, "hello was reverted");
        let u = undone_notice(&ss, false, Some("version 1.0"));
        assert_eq!(u.summary, "hello was not updated after all");
        assert_eq!(
            u.body,
            "The update to version 1.1 failed and is being undone: hello goes back to version 1.0."
        );
    }
}
