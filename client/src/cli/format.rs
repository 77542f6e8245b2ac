//! Text output: tables, times, and the renderings of API objects.

use std::fmt::Write as _;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

use crate::types::{Change, HoldUntil, Snap, SystemInfo, Task, Update};

/// What times are shown relative to: now, in the local zone.
#[derive(Debug, Clone)]
pub struct Clock {
    pub now: Zoned,
}

impl Clock {
    pub fn system() -> Self {
        // Without a usable zone database, UTC is still a readable answer.
        let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
        Clock {
            now: Timestamp::now().to_zoned(tz),
        }
    }

    /// `today at 20:15 UTC`, `yesterday at 23:59 CET`, or `2026-11-21 20:15 UTC`.
    pub fn time(&self, t: Timestamp) -> String {
        let z = t.to_zoned(self.now.time_zone().clone());
        let clock = z.strftime("%H:%M %Z");
        let day = z.date();
        let today = self.now.date();
        if day == today {
            format!("today at {clock}")
        } else if today.checked_sub(1.day()).ok() == Some(day) {
            format!("yesterday at {clock}")
        } else {
            format!("{} {clock}", z.strftime("%Y-%m-%d"))
        }
    }

    fn maybe_time(&self, t: Option<Timestamp>) -> String {
        t.map_or_else(|| "-".to_string(), |t| self.time(t))
    }
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn system_info(info: &SystemInfo, clock: &Clock) -> String {
    let mut rows = vec![
        ("version", format!("{} (api {})", info.version, info.api)),
        ("root", info.root.display().to_string()),
        ("pid", info.pid.to_string()),
        ("started", clock.time(info.started)),
        ("snaps", info.snaps.to_string()),
        ("changes in progress", info.changes_in_progress.to_string()),
        ("mount mode", info.mount_mode.to_string()),
        (
            "tracking",
            format!("{} ({})", info.tracking, info.tracking_reason),
        ),
    ];
    if !info.services.is_empty() {
        rows.push((
            "services",
            format!("{} ({})", info.services, info.services_reason),
        ));
    }
    rows.push(("auto-refresh", auto_refresh(info, clock)));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:width$} {v}\n", format!("{k}:")))
        .collect()
}

/// `every 6h, next today at 21:15 UTC, last today at 15:15 UTC`, or `off`.
fn auto_refresh(info: &SystemInfo, clock: &Clock) -> String {
    let mut parts = vec![];
    if let Some(every) = &info.auto_refresh {
        parts.push(format!("every {every}"));
        if let Some(next) = info.next_auto_refresh {
            parts.push(format!("next {}", clock.time(next)));
        }
    } else {
        parts.push("off".to_string());
    }
    if let Some(last) = info.last_auto_refresh {
        parts.push(format!("last {}", clock.time(last)));
    }
    parts.join(", ")
}

/// `held until today at 21:15 UTC`, `held forever`; None when not held (or the hold ended).
pub fn hold(hold: Option<&str>, clock: &Clock) -> Option<String> {
    match HoldUntil::parse(hold?)? {
        HoldUntil::Forever => Some("held forever".to_string()),
        HoldUntil::Time(t) if t > clock.now.timestamp() => {
            Some(format!("held until {}", clock.time(t)))
        }
        HoldUntil::Time(_) => None,
    }
}

pub fn snaps(snaps: &[Snap], clock: &Clock) -> String {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.version.clone(),
                s.revision.clone(),
                s.summary.clone(),
                notes(s, clock),
            ]
        })
        .collect();
    table(&["Name", "Version", "Rev", "Summary", "Notes"], &rows)
}

fn notes(snap: &Snap, clock: &Clock) -> String {
    let mut notes = Vec::new();
    notes.extend(hold(snap.hold.as_deref(), clock));
    if notes.is_empty() {
        "-".to_string()
    } else {
        notes.join(",")
    }
}

/// `refreshctl refresh --list`: each update, from the current revision to the store's.
pub fn updates(updates: &[Update], clock: &Clock) -> String {
    let rows: Vec<Vec<String>> = updates
        .iter()
        .map(|u| {
            let mut notes: Vec<String> = hold(u.hold.as_deref(), clock).into_iter().collect();
            if let Some(change) = u.change {
                notes.push(format!("change {change} in progress"));
            }
            vec![
                u.name.clone(),
                format!("{} (rev {})", u.version, u.revision),
                "→".to_string(),
                format!("{} (rev {})", u.store_version, u.store_revision),
                u.channel.clone(),
                if notes.is_empty() {
                    "-".to_string()
                } else {
                    notes.join(", ")
                },
            ]
        })
        .collect();
    table(&["Name", "Current", "", "Store", "Channel", "Notes"], &rows)
}

pub fn changes(changes: &[Change], clock: &Clock) -> String {
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.status.to_string(),
                clock.time(c.spawn_time),
                clock.maybe_time(c.ready_time),
                c.summary.clone(),
            ]
        })
        .collect();
    table(&["ID", "Status", "Spawn", "Ready", "Summary"], &rows)
}

/// `refreshctl tasks`: the task table, then what tasks wait for, their logs, and the error.
pub fn tasks(change: &Change, clock: &Clock) -> String {
    let rows: Vec<Vec<String>> = change
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.status.to_string(),
                clock.time(t.spawn_time),
                clock.maybe_time(t.ready_time),
                task_summary(t),
            ]
        })
        .collect();
    let mut out = table(&["Status", "Spawn", "Ready", "Summary"], &rows);

    let mut notes = String::new();
    for t in &change.tasks {
        if let Some(retry) = &t.retry {
            let _ = writeln!(
                notes,
                "{}: retrying ({} so far): {}; next attempt {}",
                t.summary,
                retry.count,
                retry.reason,
                clock.time(retry.next_attempt)
            );
        }
        if let Some(wait) = &t.wait {
            let until = wait
                .until
                .map(|u| format!(", at most until {}", clock.time(u)))
                .unwrap_or_default();
            let _ = writeln!(
                notes,
                "{}: {} (event {}{until})",
                t.summary, wait.reason, wait.event
            );
        }
    }
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }

    for t in change.tasks.iter().filter(|t| !t.log.is_empty()) {
        let _ = writeln!(out, "\n{}:", t.summary);
        for line in &t.log {
            let _ = writeln!(out, "  {line}");
        }
    }

    if let Some(error) = change.error.as_deref().filter(|e| !e.trim().is_empty()) {
        out.push_str("\nError:\n");
        for line in error.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The summary, with progress while the task is under way.
fn task_summary(t: &Task) -> String {
    let p = &t.progress;
    if t.status.is_ready() || p.total == 0 || p.done >= p.total {
        return t.summary.clone();
    }
    let label = if p.label.is_empty() {
        String::new()
    } else {
        format!("{} ", p.label)
    };
    format!(
        "{} ({label}{}%)",
        t.summary,
        p.done.saturating_mul(100) / p.total
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{MountMode, Progress, RetryInfo, Status, WaitInfo};

    fn clock() -> Clock {
        Clock {
            now: "2026-11-21T22:00:00Z"
                .parse::<Timestamp>()
                .unwrap()
                .to_zoned(TimeZone::UTC),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn times() {
        let c = clock();
        assert_eq!(c.time(ts("2026-11-21T20:15:03.120Z")), "today at 20:15 UTC");
        assert_eq!(c.time(ts("2026-11-20T23:59:00Z")), "yesterday at 23:59 UTC");
        assert_eq!(c.time(ts("2026-10-01T08:05:00Z")), "2026-10-01 08:05 UTC");
        let berlin = Clock {
            now: c.now.with_time_zone(TimeZone::fixed(jiff::tz::offset(1))),
        };
        assert!(berlin
            .time(ts("2026-11-21T20:15:00Z"))
            .starts_with("today at 21:15"));
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "Summary"],
            &[
                vec!["7".into(), "Install".into()],
                vec!["12".into(), "Remove".into()],
            ],
        );
        assert_eq!(t, "ID  Summary\n7   Install\n12  Remove\n");
    }

    #[test]
    fn status() {
        let info = SystemInfo {
            version: "0.1.0".into(),
            api: "v1".into(),
            root: "/".into(),
            pid: 4242,
            started: ts("2026-11-21T20:15:03.120Z"),
            snaps: 3,
            changes_in_progress: 1,
            mount_mode: MountMode::Loop,
            tracking: "v1".into(),
            tracking_reason: "freezer".into(),
            services: "none".into(),
            services_reason: "systemd is not PID 1".into(),
            auto_refresh: None,
            next_auto_refresh: None,
            last_auto_refresh: None,
        };
        assert_eq!(
            system_info(&info, &clock()),
            "\
version:             0.1.0 (api v1)
root:                /
pid:                 4242
started:             today at 20:15 UTC
snaps:               3
changes in progress: 1
mount mode:          loop
tracking:            v1 (freezer)
services:            none (systemd is not PID 1)
auto-refresh:        off
"
        );
        let on = SystemInfo {
            auto_refresh: Some("6h".into()),
            next_auto_refresh: Some(ts("2026-11-21T23:00:00Z")),
            last_auto_refresh: Some(ts("2026-11-21T17:00:00Z")),
            ..info.clone()
        };
        assert!(system_info(&on, &clock()).ends_with(
            "auto-refresh:        every 6h, next today at 23:00 UTC, last today at 17:00 UTC\n"
        ));
        let off = SystemInfo {
            auto_refresh: None,
            next_auto_refresh: None,
            ..on
        };
        assert!(system_info(&off, &clock())
            .ends_with("auto-refresh:        off, last today at 17:00 UTC\n"));
    }

    fn task(status: Status) -> Task {
        Task {
            id: 31,
            kind: "mount".into(),
            summary: "Mount snap \"hello\" (x1)".into(),
            status,
            progress: Progress {
                label: "copying".into(),
                done: 1,
                total: 4,
            },
            log: vec!["2026-11-21T20:15:03Z INFO mounted".into()],
            retry: None,
            wait: None,
            spawn_time: ts("2026-11-21T20:15:03Z"),
            ready_time: None,
        }
    }

    #[test]
    fn tasks_with_retry_wait_logs_and_error() {
        let mut doing = task(Status::Doing);
        doing.retry = Some(RetryInfo {
            count: 2,
            reason: "loop device busy".into(),
            next_attempt: ts("2026-11-21T20:15:05Z"),
        });
        let mut waiting = task(Status::Wait);
        waiting.summary = "Stop \"hello\"".into();
        waiting.log.clear();
        waiting.wait = Some(WaitInfo {
            event: "snap-idle:hello".into(),
            until: None,
            reason: "waiting for 2 processes to exit".into(),
        });
        let change = Change {
            id: 7,
            kind: "install".into(),
            summary: "Install".into(),
            snap: Some("hello".into()),
            status: Status::Doing,
            ready: false,
            spawn_time: ts("2026-11-21T20:15:03Z"),
            ready_time: None,
            error: Some("cannot do x\ncannot do y".into()),
            tasks: vec![doing, waiting],
        };
        let out = tasks(&change, &clock());
        assert_eq!(
            out,
            "\
Status  Spawn               Ready  Summary
Doing   today at 20:15 UTC  -      Mount snap \"hello\" (x1) (copying 25%)
Wait    today at 20:15 UTC  -      Stop \"hello\" (copying 25%)

Mount snap \"hello\" (x1): retrying (2 so far): loop device busy; next attempt today at 20:15 UTC
Stop \"hello\": waiting for 2 processes to exit (event snap-idle:hello)

Mount snap \"hello\" (x1):
  2026-11-21T20:15:03Z INFO mounted

Error:
  cannot do x
  cannot do y
"
        );
    }

    #[test]
    fn snap_list() {
        let snap = Snap {
            name: "hello_work".into(),
            snap_name: "hello".into(),
            instance_key: Some("work".into()),
            revision: "x2".into(),
            version: "1.0".into(),
            summary: "Says hello".into(),
            channel: None,
            hold: Some("forever".into()),
            revisions: vec!["x1".into(), "x2".into()],
            apps: vec![],
            installed: ts("2026-11-21T20:15:03Z"),
        };
        assert_eq!(
            snaps(std::slice::from_ref(&snap), &clock()),
            "Name        Version  Rev  Summary     Notes\nhello_work  1.0      x2   Says hello  held forever\n"
        );
        let until = Snap {
            hold: Some("2026-11-21T23:30:00Z".into()),
            ..snap.clone()
        };
        assert!(snaps(&[until], &clock()).ends_with("Says hello  held until today at 23:30 UTC\n"));
        // An expired hold is no hold.
        let expired = Snap {
            hold: Some("2026-11-21T21:59:59Z".into()),
            ..snap
        };
        assert!(snaps(&[expired], &clock()).ends_with("Says hello  -\n"));
    }

    #[test]
    fn update_list() {
        let update = |name: &str, hold: Option<&str>, change: Option<u64>| Update {
            name: name.into(),
            revision: "1".into(),
            version: "1.0".into(),
            channel: "stable".into(),
            store_revision: "12".into(),
            store_version: "2.0".into(),
            hold: hold.map(String::from),
            change,
        };
        assert_eq!(
            updates(
                &[
                    update("alpha", None, None),
                    update("beta", Some("2026-11-22T08:00:00Z"), Some(7)),
                ],
                &clock()
            ),
            "\
Name   Current         Store         Channel  Notes
alpha  1.0 (rev 1)  →  2.0 (rev 12)  stable   -
beta   1.0 (rev 1)  →  2.0 (rev 12)  stable   held until 2026-11-22 08:00 UTC, change 7 in progress
"
        );
    }
}
