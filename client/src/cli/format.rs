//! Text output: tables, times, and the renderings of API objects.
//!
//! What the daemon sends carries what users, snaps and the store chose (command lines, file
//! names in task logs, summaries, store messages). Every rendering here starts by passing the
//! object through [`for_terminal`], so none of it reaches a terminal as a control sequence or a
//! forged line; JSON output goes through [`json_for_terminal`].

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt::Write as _;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use refreshd_snap::text::{json_printable, printable};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::types::{
    Change, HoldUntil, ReleaseAgent, Snap, SnapProcess, SnapStatus, Status, StoreInfo, SystemInfo,
    Task, Update,
};

/// `value` with every string in it, and every key, made [`printable`]: the one way an API
/// object becomes safe to show as text. The types are the API's, which travel as JSON, so they
/// always make the round trip; escaping only touches characters no valid value of a typed
/// field (a time, a status) has.
pub fn for_terminal<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let mut v = serde_json::to_value(value).expect("API objects are JSON");
    escape_strings(&mut v);
    serde_json::from_value(v).expect("escaped API objects are still API objects")
}

fn escape_strings(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(e) = printable(s) {
                *s = e;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(escape_strings),
        Value::Object(map) => {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(k, mut v)| {
                    escape_strings(&mut v);
                    (printable(&k).into_owned(), v)
                })
                .collect();
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `value` as pretty JSON, with what JSON leaves raw but a terminal would act on (DEL, C1,
/// bidirectional overrides) written as `\uXXXX`: the same value, safe to print.
pub fn json_for_terminal<T: Serialize>(value: &T) -> serde_json::Result<String> {
    let text = serde_json::to_string_pretty(value)?;
    Ok(json_printable(&text).into_owned())
}

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

    /// `2 minutes ago`, `in 5 minutes`, `just now`: whole units, rounded down.
    pub fn relative(&self, t: Timestamp) -> String {
        let ms = t.as_millisecond() - self.now.timestamp().as_millisecond();
        let secs = ms.unsigned_abs() / 1000;
        let (n, unit) = match secs {
            0 => return "just now".to_string(),
            1..60 => (secs, "second"),
            60..3600 => (secs / 60, "minute"),
            // Up to two days in hours: "36 hours ago" says more than "1 day ago".
            3600..172_800 => (secs / 3600, "hour"),
            _ => (secs / 86_400, "day"),
        };
        let plural = if n == 1 { "" } else { "s" };
        if ms < 0 {
            format!("{n} {unit}{plural} ago")
        } else {
            format!("in {n} {unit}{plural}")
        }
    }

    /// `today at 20:15 UTC (2 minutes ago)`: when exactly, and how long from now.
    pub fn when(&self, t: Timestamp) -> String {
        format!("{} ({})", self.time(t), self.relative(t))
    }

    fn maybe_relative(&self, t: Option<Timestamp>) -> String {
        t.map_or_else(|| "-".to_string(), |t| self.relative(t))
    }
}

/// Colours, on a terminal only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paint {
    on: bool,
}

impl Paint {
    /// Colour for output to a terminal, unless `NO_COLOR` is set to anything but the empty
    /// string (no-color.org) or the terminal is `dumb`.
    pub fn detect(is_terminal: bool) -> Paint {
        Paint::decide(
            is_terminal,
            std::env::var_os("NO_COLOR"),
            std::env::var_os("TERM"),
        )
    }

    fn decide(is_terminal: bool, no_color: Option<OsString>, term: Option<OsString>) -> Paint {
        let asked_not = no_color.is_some_and(|v| !v.is_empty());
        let dumb = term.is_some_and(|t| t == "dumb");
        Paint {
            on: is_terminal && !asked_not && !dumb,
        }
    }

    fn sgr(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn bold(self, text: &str) -> String {
        self.sgr("1", text)
    }

    pub fn red(self, text: &str) -> String {
        self.sgr("31", text)
    }

    pub fn yellow(self, text: &str) -> String {
        self.sgr("33", text)
    }

    /// A status word: green when done, red for errors, yellow for waits and what was undone,
    /// cyan while running.
    pub fn status(self, s: Status) -> String {
        let code = match s {
            Status::Done => "32",
            Status::Error => "31",
            Status::Wait | Status::Undo | Status::Undoing | Status::Undone | Status::Hold => "33",
            Status::Doing => "36",
            Status::Do => return s.to_string(),
        };
        self.sgr(code, s.as_str())
    }
}

/// How many columns `s` takes: its characters, not counting colour sequences.
fn width(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            n += 1;
        }
    }
    n
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
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
                let pad = widths[i].saturating_sub(width(cell));
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn system_info(info: &SystemInfo, clock: &Clock) -> String {
    let info = &for_terminal(info);
    let mut rows = vec![
        ("version", format!("{} (api {})", info.version, info.api)),
        ("root", info.root.display().to_string()),
        ("pid", info.pid.to_string()),
        ("started", clock.when(info.started)),
        ("snaps", info.snaps.to_string()),
        ("changes in progress", info.changes_in_progress.to_string()),
        ("mount mode", info.mount_mode.to_string()),
        (
            "tracking",
            format!("{} ({})", info.tracking, info.tracking_reason),
        ),
    ];
    if let Some(agent) = &info.release_agent {
        rows.push(("release agent", release_agent(agent)));
    }
    if !info.services.is_empty() {
        rows.push((
            "services",
            format!("{} ({})", info.services, info.services_reason),
        ));
    }
    rows.push(("auto-refresh", auto_refresh(info, clock)));
    if let Some(store) = &info.store {
        rows.push(("store", store_trust(store)));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:width$} {v}\n", format!("{k}:")))
        .collect()
}

/// `https://store.example (signed, root /etc/refreshd/store-root.json)`, or `/srv/store (NOT
/// VERIFIED: --insecure-unsigned-store)`.
fn store_trust(store: &StoreInfo) -> String {
    match (store.signed, &store.root) {
        (true, Some(root)) => format!("{} (signed, root {})", store.url, root.display()),
        (true, None) => format!("{} (signed)", store.url),
        (false, _) => format!("{} (NOT VERIFIED: --insecure-unsigned-store)", store.url),
    }
}

/// What the kernel runs when a freezer group empties: `/usr/lib/refreshd/refresh-release-agent
/// (refreshd's, safe)`, `/opt/x/agent (not refreshd's; UNSAFE: /opt/x is writable by everyone
/// (mode 777))`, or `none`.
fn release_agent(a: &ReleaseAgent) -> String {
    if a.path.is_empty() {
        return match a.why.as_str() {
            "" => "none".to_string(),
            why => format!("unknown ({why})"),
        };
    }
    let whose = if a.ours {
        "refreshd's"
    } else {
        "not refreshd's"
    };
    if a.safe {
        format!("{} ({whose}, safe)", a.path)
    } else {
        format!("{} ({whose}; UNSAFE: {})", a.path, a.why)
    }
}

/// `every 6h, next today at 21:15 UTC (in 6 hours), last today at 15:15 UTC (2 minutes ago)`,
/// or `off`.
fn auto_refresh(info: &SystemInfo, clock: &Clock) -> String {
    let mut parts = vec![];
    if let Some(every) = &info.auto_refresh {
        parts.push(format!("every {every}"));
        if let Some(next) = info.next_auto_refresh {
            parts.push(format!("next {}", clock.when(next)));
        }
    } else {
        parts.push("off".to_string());
    }
    if let Some(last) = info.last_auto_refresh {
        parts.push(format!("last {}", clock.when(last)));
    }
    parts.join(", ")
}

/// `held until today at 21:15 UTC (in 3 hours)`, `held forever`; None when not held (or the
/// hold ended).
pub fn hold(hold: Option<&str>, clock: &Clock) -> Option<String> {
    match HoldUntil::parse(hold?)? {
        HoldUntil::Forever => Some("held forever".to_string()),
        HoldUntil::Reverted => Some("held since its revert".to_string()),
        HoldUntil::Time(t) if t > clock.now.timestamp() => {
            Some(format!("held until {}", clock.when(t)))
        }
        HoldUntil::Time(_) => None,
    }
}

pub fn snaps(snaps: &[Snap], clock: &Clock) -> String {
    let snaps = &for_terminal(&snaps.to_vec());
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.version.clone(),
                s.revision.clone(),
                // What `refresh` follows: a store channel, or nothing (installed from a file).
                s.channel.clone().unwrap_or_else(|| "local".into()),
                s.summary.clone(),
                notes(s, clock),
            ]
        })
        .collect();
    table(
        &["Name", "Version", "Rev", "Tracking", "Summary", "Notes"],
        &rows,
    )
}

fn notes(snap: &Snap, clock: &Clock) -> String {
    let mut notes = Vec::new();
    notes.extend(hold(snap.hold.as_deref(), clock));
    // A store snap running a revision from a file is left alone by `refresh` without names.
    if snap.channel.is_some() && snap.revision.starts_with('x') {
        notes.push("local revision".to_string());
    }
    if notes.is_empty() {
        "-".to_string()
    } else {
        notes.join(",")
    }
}

/// `refreshctl refresh --list`: each update, from the current revision to the store's.
pub fn updates(updates: &[Update], clock: &Clock) -> String {
    let updates = &for_terminal(&updates.to_vec());
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

/// `refreshctl changes`: when each was made and became ready, relative to now.
pub fn changes(changes: &[Change], clock: &Clock, paint: Paint) -> String {
    let changes = &for_terminal(&changes.to_vec());
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                paint.status(c.status),
                clock.relative(c.spawn_time),
                clock.maybe_relative(c.ready_time),
                c.summary.clone(),
            ]
        })
        .collect();
    table(&["ID", "Status", "Spawn", "Ready", "Summary"], &rows)
}

/// `refreshctl tasks`: the task table, then what tasks wait for, their logs, and the error.
pub fn tasks(raw: &Change, clock: &Clock, paint: Paint) -> String {
    let change = &for_terminal(raw);
    let rows: Vec<Vec<String>> = change
        .tasks
        .iter()
        .map(|t| {
            vec![
                paint.status(t.status),
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
                clock.relative(retry.next_attempt)
            );
        }
        if let Some(wait) = &t.wait {
            let until = wait
                .until
                .map(|u| format!(", at most until {}", clock.when(u)))
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

    // The error is a line per failed task: its lines are kept, each escaped.
    if let Some(error) = raw.error.as_deref().filter(|e| !e.trim().is_empty()) {
        let _ = writeln!(out, "\n{}", paint.red("Error:"));
        for line in error.lines() {
            let _ = writeln!(out, "  {}", printable(line));
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

/// `refreshctl status NAME`: the snap, its change in progress and what that waits for, and
/// the snap's processes (which a refresh waits for, and never stops).
pub fn snap_status(st: &SnapStatus, clock: &Clock, paint: Paint) -> String {
    let st = &for_terminal(st);
    let revision = match (&st.revision, &st.version) {
        (Some(r), Some(v)) => format!("{r} (version {v})"),
        (Some(r), None) => r.clone(),
        _ => "none yet (being installed)".to_string(),
    };
    let launches = match (st.inhibited, &st.waiting) {
        (false, _) => "allowed".to_string(),
        (true, Some(_)) => "held back until the running apps have exited".to_string(),
        (true, None) => match &st.change {
            Some(c) => format!(
                "held back until change {} leaves its critical section",
                c.id
            ),
            None => "held back (a critical section was interrupted)".to_string(),
        },
    };
    let mut rows = vec![
        ("snap", st.name.clone()),
        ("revision", revision),
        ("launches", launches),
    ];
    if let Some(held) = hold(st.hold.as_deref(), clock) {
        let lift = if st.hold.as_deref() == Some(crate::types::REVERTED) {
            format!("refreshctl refresh {} refreshes it", st.name)
        } else {
            format!("refreshctl refresh --unhold {} lifts it", st.name)
        };
        rows.push(("refreshes", format!("{held}; {lift}")));
    }
    match &st.change {
        Some(c) => rows.push((
            "change",
            format!(
                "{} {} ({}, started {})",
                c.id,
                c.summary,
                paint.status(c.status),
                clock.relative(c.spawn_time)
            ),
        )),
        None => rows.push(("change", "none in progress".to_string())),
    }
    if let Some(w) = &st.waiting {
        let n = st.processes.len();
        let what = match n {
            0 => "its apps".to_string(),
            1 => "1 process".to_string(),
            n => format!("{n} processes"),
        };
        rows.push((
            "waiting",
            format!("for {what} to exit, since {}", clock.when(w.since)),
        ));
    }
    let key_width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out: String = rows
        .iter()
        .map(|(k, v)| format!("{:key_width$} {v}\n", format!("{k}:")))
        .collect();

    out.push('\n');
    let name = &st.name;
    if st.tracking == "none" {
        let _ = writeln!(
            out,
            "The processes of {name} cannot be seen (tracking: none); a refresh does not wait for them."
        );
        return out;
    }
    if st.processes.is_empty() {
        let tail = if st.change.is_some() {
            ""
        } else {
            ": a refresh would not wait"
        };
        let _ = writeln!(out, "No process of {name} is running{tail}.");
        services_table(&mut out, st, &paint, clock);
        return out;
    }
    let lead = if st.waiting.is_some() {
        "The refresh waits for these processes to exit (it never stops them):"
    } else {
        "A refresh would wait for these processes to exit (it never stops them):"
    };
    let _ = writeln!(out, "{}", paint.bold(lead));
    // The unit column only where systemd is PID 1 (every process is then in one).
    let units = st.processes.iter().any(|p| p.unit.is_some());
    let rows: Vec<Vec<String>> = st
        .processes
        .iter()
        .map(|p| {
            let mut row = vec![p.pid.to_string(), owner(p), clock.maybe_relative(p.started)];
            if units {
                row.push(
                    p.unit
                        .as_deref()
                        .map_or_else(|| "-".into(), |u| printable(u).into_owned()),
                );
            }
            row.push(command_line(p));
            row
        })
        .collect();
    let head: &[&str] = if units {
        &["PID", "User", "Started", "Unit", "Command"]
    } else {
        &["PID", "User", "Started", "Command"]
    };
    out.push_str(&table(head, &rows));
    services_table(&mut out, st, &paint, clock);
    out
}

/// The processes of the snap's services, in their units: a refresh stops and starts them.
fn services_table(out: &mut String, st: &SnapStatus, paint: &Paint, clock: &Clock) {
    if st.services.is_empty() {
        return;
    }
    let lead = "Its services' processes (a refresh stops and starts the services itself):";
    let _ = writeln!(out, "\n{}", paint.bold(lead));
    let rows: Vec<Vec<String>> = st
        .services
        .iter()
        .map(|p| {
            vec![
                p.pid.to_string(),
                owner(p),
                clock.maybe_relative(p.started),
                p.unit
                    .as_deref()
                    .map_or_else(|| "-".into(), |u| printable(u).into_owned()),
                command_line(p),
            ]
        })
        .collect();
    out.push_str(&table(
        &["PID", "User", "Started", "Unit", "Command"],
        &rows,
    ));
}

/// `alice (1000)`, or the bare uid when it has no name.
fn owner(p: &SnapProcess) -> String {
    match &p.user {
        Some(name) => format!("{name} ({})", p.uid),
        None => p.uid.to_string(),
    }
}

/// The command line as a shell would take it back; `[comm]` for a process without one (as
/// `ps` shows it); a note where it is withheld.
fn command_line(p: &SnapProcess) -> String {
    match &p.command {
        None => format!(
            "[{}] (another user's command line: hidden by /proc's hidepid)",
            printable(&p.comm)
        ),
        Some(args) if args.is_empty() => format!("[{}]", printable(&p.comm)),
        Some(args) => args
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `a` as is when a shell would read it back unchanged, else in single quotes. Control
/// characters are shown escaped, so a command line cannot move the terminal's cursor.
fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_alphanumeric() || "-_./=:,+@%^".contains(c));
    let a = printable(a);
    if plain {
        a.into_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
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
            release_agent: Some(ReleaseAgent {
                path: "/usr/lib/refreshd/refresh-release-agent".into(),
                ours: true,
                safe: true,
                why: String::new(),
            }),
            store: None,
        };
        assert_eq!(
            system_info(&info, &clock()),
            "\
version:             0.1.0 (api v1)
root:                /
pid:                 4242
started:             today at 20:15 UTC (1 hour ago)
snaps:               3
changes in progress: 1
mount mode:          loop
tracking:            v1 (freezer)
release agent:       /usr/lib/refreshd/refresh-release-agent (refreshd's, safe)
services:            none (systemd is not PID 1)
auto-refresh:        off
"
        );
        let planted = SystemInfo {
            release_agent: Some(ReleaseAgent {
                path: "/tmp/build/refresh-release-agent".into(),
                ours: false,
                safe: false,
                why: "/tmp/build/refresh-release-agent does not exist".into(),
            }),
            ..info.clone()
        };
        assert!(system_info(&planted, &clock()).contains(
            "release agent:       /tmp/build/refresh-release-agent (not refreshd's; UNSAFE: /tmp/build/refresh-release-agent does not exist)\n"
        ));
        let none = SystemInfo {
            release_agent: Some(ReleaseAgent {
                path: String::new(),
                ours: false,
                safe: false,
                why: String::new(),
            }),
            ..info.clone()
        };
        assert!(system_info(&none, &clock()).contains("release agent:       none\n"));
        let on = SystemInfo {
            auto_refresh: Some("6h".into()),
            next_auto_refresh: Some(ts("2026-11-21T23:00:00Z")),
            last_auto_refresh: Some(ts("2026-11-21T17:00:00Z")),
            ..info.clone()
        };
        assert!(system_info(&on, &clock()).ends_with(
            "auto-refresh:        every 6h, next today at 23:00 UTC (in 1 hour), last today at 17:00 UTC (5 hours ago)\n"
        ));
        let off = SystemInfo {
            auto_refresh: None,
            next_auto_refresh: None,
            ..on
        };
        assert!(system_info(&off, &clock())
            .ends_with("auto-refresh:        off, last today at 17:00 UTC (5 hours ago)\n"));
        let signed = SystemInfo {
            store: Some(StoreInfo {
                url: "https://store.example".into(),
                signed: true,
                root: Some("/etc/refreshd/store-root.json".into()),
            }),
            ..info.clone()
        };
        assert!(system_info(&signed, &clock()).ends_with(
            "store:               https://store.example (signed, root /etc/refreshd/store-root.json)\n"
        ));
        let unsigned = SystemInfo {
            store: Some(StoreInfo {
                url: "/srv/store".into(),
                signed: false,
                root: None,
            }),
            ..info.clone()
        };
        assert!(system_info(&unsigned, &clock()).ends_with(
            "store:               /srv/store (NOT VERIFIED: --insecure-unsigned-store)\n"
        ));
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
        let out = tasks(&change, &clock(), Paint::default());
        assert_eq!(
            out,
            "\
Status  Spawn               Ready  Summary
Doing   today at 20:15 UTC  -      Mount snap \"hello\" (x1) (copying 25%)
Wait    today at 20:15 UTC  -      Stop \"hello\" (copying 25%)

Mount snap \"hello\" (x1): retrying (2 so far): loop device busy; next attempt 1 hour ago
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
            "Name        Version  Rev  Tracking  Summary     Notes\nhello_work  1.0      x2   local     Says hello  held forever\n"
        );
        let until = Snap {
            hold: Some("2026-11-21T23:30:00Z".into()),
            ..snap.clone()
        };
        assert!(snaps(&[until], &clock())
            .ends_with("Says hello  held until today at 23:30 UTC (in 1 hour)\n"));
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
beta   1.0 (rev 1)  →  2.0 (rev 12)  stable   held until 2026-11-22 08:00 UTC (in 10 hours), change 7 in progress
"
        );
    }

    #[test]
    fn relative_times() {
        let c = clock();
        let at = |secs: i64| Timestamp::from_second(c.now.timestamp().as_second() + secs).unwrap();
        for (secs, want) in [
            (0, "just now"),
            (-1, "1 second ago"),
            (-59, "59 seconds ago"),
            (-60, "1 minute ago"),
            (-150, "2 minutes ago"),
            (-3600, "1 hour ago"),
            (-36 * 3600, "36 hours ago"),
            (-2 * 86_400, "2 days ago"),
            (-400 * 86_400, "400 days ago"),
            (300, "in 5 minutes"),
            (7200, "in 2 hours"),
            (86_400 * 3, "in 3 days"),
        ] {
            assert_eq!(c.relative(at(secs)), want, "{secs}");
        }
        assert_eq!(
            c.when(ts("2026-11-21T21:58:00Z")),
            "today at 21:58 UTC (2 minutes ago)"
        );
    }

    #[test]
    fn colour_only_on_a_terminal_and_without_no_color() {
        let on = |tty, no_color: Option<&str>, term: Option<&str>| {
            Paint::decide(tty, no_color.map(Into::into), term.map(Into::into)).on
        };
        assert!(on(true, None, Some("xterm-256color")));
        assert!(on(true, None, None));
        assert!(!on(false, None, Some("xterm")));
        assert!(!on(true, Some("1"), Some("xterm")));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(on(true, Some(""), Some("xterm")));
        assert!(!on(true, None, Some("dumb")));

        let paint = Paint { on: true };
        assert_eq!(paint.status(Status::Done), "\x1b[32mDone\x1b[0m");
        assert_eq!(paint.status(Status::Do), "Do");
        assert_eq!(Paint::default().status(Status::Error), "Error");
        // Colour does not count in the width of a column.
        let t = table(
            &["Status", "ID"],
            &[
                vec![paint.status(Status::Done), "1".into()],
                vec![paint.status(Status::Undoing), "2".into()],
            ],
        );
        assert_eq!(
            t,
            "Status   ID\n\x1b[32mDone\x1b[0m     1\n\x1b[33mUndoing\x1b[0m  2\n"
        );
    }

    #[test]
    fn change_table_shows_relative_times_and_coloured_statuses() {
        let change = Change {
            id: 7,
            kind: "refresh".into(),
            summary: "Refresh \"hello\" to 2".into(),
            snap: Some("hello".into()),
            status: Status::Error,
            ready: true,
            spawn_time: ts("2026-11-21T21:55:00Z"),
            ready_time: Some(ts("2026-11-21T21:59:30Z")),
            error: None,
            tasks: vec![],
        };
        assert_eq!(
            changes(std::slice::from_ref(&change), &clock(), Paint::default()),
            "\
ID  Status  Spawn          Ready           Summary
7   Error   5 minutes ago  30 seconds ago  Refresh \"hello\" to 2
"
        );
        let coloured = changes(&[change], &clock(), Paint { on: true });
        assert!(
            coloured.contains("7   \x1b[31mError\x1b[0m   5 minutes ago"),
            "{coloured:?}"
        );
    }

    fn process(pid: u32, user: Option<&str>, command: Option<&[&str]>) -> SnapProcess {
        SnapProcess {
            unit: None,
            pid,
            uid: 1000,
            user: user.map(String::from),
            command: command.map(|c| c.iter().map(|a| a.to_string()).collect()),
            comm: "hold".into(),
            started: Some(ts("2026-11-21T21:50:00Z")),
        }
    }

    fn blocked() -> SnapStatus {
        SnapStatus {
            name: "hello".into(),
            revision: Some("x1".into()),
            version: Some("1.0".into()),
            tracking: "v2".into(),
            inhibited: false,
            change: Some(Change {
                id: 7,
                kind: "install".into(),
                summary: "Install \"hello\" (x2) from a file".into(),
                snap: Some("hello".into()),
                status: Status::Wait,
                ready: false,
                spawn_time: ts("2026-11-21T21:57:00Z"),
                ready_time: None,
                error: None,
                tasks: vec![],
            }),
            waiting: Some(crate::types::AppsWait {
                task: 45,
                since: ts("2026-11-21T21:57:30Z"),
                reason: "waiting for 2 processes to exit: ...".into(),
            }),
            services: vec![],
            processes: vec![
                process(
                    4242,
                    Some("alice"),
                    Some(&["/snap/hello/x1/bin/hold", "--window", "my file"]),
                ),
                process(4250, None, None),
            ],
            hold: None,
            warning: None,
        }
    }

    #[test]
    fn snap_status_names_what_blocks_the_refresh() {
        assert_eq!(
            snap_status(&blocked(), &clock(), Paint::default()),
            "\
snap:     hello
revision: x1 (version 1.0)
launches: allowed
change:   7 Install \"hello\" (x2) from a file (Wait, started 3 minutes ago)
waiting:  for 2 processes to exit, since today at 21:57 UTC (2 minutes ago)

The refresh waits for these processes to exit (it never stops them):
PID   User          Started         Command
4242  alice (1000)  10 minutes ago  /snap/hello/x1/bin/hold --window 'my file'
4250  1000          10 minutes ago  [hold] (another user's command line: hidden by /proc's hidepid)
"
        );
    }

    #[test]
    fn snap_status_without_a_change() {
        let idle = SnapStatus {
            change: None,
            waiting: None,
            services: vec![],
            processes: vec![],
            ..blocked()
        };
        let out = snap_status(&idle, &clock(), Paint::default());
        assert!(out.contains("change:   none in progress\n"), "{out}");
        assert!(
            out.ends_with("\nNo process of hello is running: a refresh would not wait.\n"),
            "{out}"
        );
        let running = SnapStatus {
            services: vec![],
            processes: vec![process(9, Some("bob"), Some(&[]))],
            ..idle.clone()
        };
        let out = snap_status(&running, &clock(), Paint::default());
        assert!(
            out.contains("A refresh would wait for these processes to exit"),
            "{out}"
        );
        assert!(
            out.ends_with("9    bob (1000)  10 minutes ago  [hold]\n"),
            "{out}"
        );
        let reverted = SnapStatus {
            hold: Some("reverted".into()),
            ..idle.clone()
        };
        assert!(
            snap_status(&reverted, &clock(), Paint::default()).contains(
                "refreshes: held since its revert; refreshctl refresh hello refreshes it"
            ),
            "{}",
            snap_status(&reverted, &clock(), Paint::default())
        );
        let untracked = SnapStatus {
            tracking: "none".into(),
            ..idle.clone()
        };
        assert!(snap_status(&untracked, &clock(), Paint::default())
            .contains("cannot be seen (tracking: none); a refresh does not wait for them"));
        let critical = SnapStatus {
            inhibited: true,
            waiting: None,
            ..blocked()
        };
        assert!(snap_status(&critical, &clock(), Paint::default())
            .contains("launches: held back until change 7 leaves its critical section\n"));
    }

    #[test]
    fn command_lines_are_quoted_and_harmless() {
        for (arg, want) in [
            ("plain-arg_1.0", "plain-arg_1.0"),
            ("--opt=a,b", "--opt=a,b"),
            ("two words", "'two words'"),
            ("", "''"),
            ("it's", r"'it'\''s'"),
            ("$HOME", "'$HOME'"),
            ("\x1b[2Jboom\n", r"'\u{1b}[2Jboom\n'"),
        ] {
            assert_eq!(shell_quote(arg), want, "{arg:?}");
        }
    }

    /// Whatever the daemon sends — a command line made with `exec -a`, a file name in a task
    /// log, a summary or a store message — no rendering lets a control character, a C1 CSI or
    /// a bidirectional override through, nor a newline of its own.
    #[test]
    fn hostile_text_from_the_daemon_reaches_no_terminal() {
        let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nFAKE root: done\u{9b}31m\u{202e}x";
        let clean = |what: &str, out: &str| {
            assert!(
                !out.chars()
                    .any(|c| c != '\n' && refreshd_snap::text::escapes(c)),
                "{what}: {out:?}"
            );
            assert!(!out.contains("\nFAKE"), "{what}: a forged line: {out}");
        };
        let mut st = blocked();
        st.processes[0].command = Some(vec![evil.into(), evil.into()]);
        st.processes[0].user = Some(evil.into());
        st.processes[1].comm = evil.into();
        st.waiting.as_mut().unwrap().reason = evil.into();
        let mut waiting = task(Status::Wait);
        waiting.summary = evil.into();
        waiting.log = vec![evil.into()];
        waiting.progress.label = evil.into();
        waiting.wait = Some(WaitInfo {
            event: evil.into(),
            until: None,
            reason: evil.into(),
        });
        waiting.retry = Some(RetryInfo {
            count: 1,
            reason: evil.into(),
            next_attempt: ts("2026-11-21T20:15:05Z"),
        });
        let mut change = st.change.clone().unwrap();
        change.summary = evil.into();
        change.error = Some(format!("{evil}\n{evil}"));
        change.tasks = vec![waiting];
        st.change = Some(change.clone());
        clean("status", &snap_status(&st, &clock(), Paint::default()));
        clean("tasks", &tasks(&change, &clock(), Paint::default()));
        clean("changes", &changes(&[change], &clock(), Paint::default()));
        let json = json_for_terminal(&st).unwrap();
        assert!(
            !json
                .chars()
                .any(|c| c != '\n' && refreshd_snap::text::escapes(c)),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<SnapStatus>(&json).unwrap(), st);
    }
}
