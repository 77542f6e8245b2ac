//! What fleets scrape (docs/metrics.md): refreshes by outcome, how long they waited for apps,
//! how long their critical sections lasted, and what is pending now.
//!
//! Counters and histograms live in memory: they count what happened since this refreshd
//! started (a restart resets them, which Prometheus' `rate()` and `increase()` expect). They
//! cannot come from the state database, whose ready changes are pruned. Gauges are read from
//! the database at each scrape, so they are right after a restart too.
//!
//! The engine tells [`Metrics`], its [`Observer`], of each task step it commits and of each
//! change that becomes ready, with what it has just written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use refreshd_state::{ChangeRow, Select, TaskRow};

use crate::engine::{Observer, Phase, Status};
use crate::kinds::{ChangeKind, TaskKind};
use crate::tracking::IDLE_EVENT;

/// The task that waits for a snap's processes to exit and enters the critical section.
const WAIT_FOR_APPS: &str = TaskKind::WaitForApps.as_str();
/// The task that leaves the critical section.
const LIFT_INHIBITION: &str = TaskKind::LiftInhibition.as_str();
/// What those two tasks log, with a unix-ns stamp after `at=` (tasks/apps.rs).
const ENTERED: &str = "critical section entered at=";
const LEFT: &str = "critical section left at=";

/// Upper bounds (seconds) of the wait-for-apps histogram: from an app that was not running at
/// all, through a work day, to an app left open for a week.
pub const WAIT_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0, 259200.0, 604800.0,
];
/// Upper bounds (seconds) of the critical-section histogram: launches wait that long, so it
/// should stay well under a second; the top buckets catch a big data copy.
pub const CRITICAL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The change kinds that can be refreshes, shown at 0 before any finished (a series that
/// appears only on its first event hides that first event from `increase()`).
const REFRESH_KINDS: &[ChangeKind] =
    &[ChangeKind::Install, ChangeKind::Refresh, ChangeKind::Revert];

/// How a change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// `Done`.
    Done,
    /// `Error`: a task failed, what was done is undone.
    Error,
    /// `Undone` or `Hold`: aborted on request, before or after tasks ran.
    Aborted,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Done, Outcome::Error, Outcome::Aborted];

    pub fn of(status: Status) -> Outcome {
        match status {
            Status::Done => Outcome::Done,
            Status::Error => Outcome::Error,
            _ => Outcome::Aborted,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Error => "error",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Something learnt from a committed task step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// A refresh stopped waiting for apps after this many seconds.
    Wait(f64),
    /// A critical section lasted this many seconds.
    Critical(f64),
}

/// A Prometheus histogram: a count per bucket (not cumulative; summed when written), the
/// observations beyond the last bound, their sum and count.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        // A clock set back must not make a negative duration.
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, &bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

struct Recorded {
    /// Finished refreshes by (change kind, outcome).
    refreshes: BTreeMap<(String, Outcome), u64>,
    wait: Histogram,
    critical: Histogram,
}

/// The daemon's counters and histograms, since it started.
pub struct Metrics {
    recorded: Mutex<Recorded>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut refreshes = BTreeMap::new();
        for kind in REFRESH_KINDS {
            for outcome in Outcome::ALL {
                refreshes.insert((kind.as_str().to_owned(), outcome), 0);
            }
        }
        Metrics {
            recorded: Mutex::new(Recorded {
                refreshes,
                wait: Histogram::new(WAIT_BUCKETS),
                critical: Histogram::new(CRITICAL_BUCKETS),
            }),
        }
    }
}

impl Metrics {
    pub fn observe(&self, o: Observation) {
        let mut r = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        match o {
            Observation::Wait(s) => r.wait.observe(s),
            Observation::Critical(s) => r.critical.observe(s),
        }
    }

    /// Counts a refresh of change kind `kind` that ended with `outcome`.
    pub fn finished(&self, kind: &str, outcome: Outcome) {
        let mut r = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        *r.refreshes.entry((kind.to_owned(), outcome)).or_default() += 1;
    }

    /// The Prometheus text exposition (format 0.0.4) of everything: the recorded metrics, the
    /// gauges read from the state, and the process's own.
    pub fn render(&self, g: &Gauges, p: &ProcessInfo) -> String {
        let mut out = String::new();
        {
            let r = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            head(
                &mut out,
                "refreshd_refreshes_total",
                "counter",
                "Refreshes (changes that replace a snap's current revision: a file installed over it, a store refresh, a revert) that finished since refreshd started, by change kind and outcome (done, error, aborted).",
            );
            for ((kind, outcome), n) in &r.refreshes {
                let _ = writeln!(
                    out,
                    "refreshd_refreshes_total{{kind=\"{}\",outcome=\"{}\"}} {n}",
                    escape(kind),
                    outcome.as_str()
                );
            }
            head(
                &mut out,
                "refreshd_refresh_wait_seconds",
                "histogram",
                "How long refreshes waited for the snap's processes to exit, from when the wait could start to when none was left.",
            );
            r.wait.write(&mut out, "refreshd_refresh_wait_seconds");
            head(
                &mut out,
                "refreshd_critical_section_seconds",
                "histogram",
                "How long critical sections lasted (launches of the snap wait meanwhile), from entering it in wait-for-apps to leaving it in lift-inhibition.",
            );
            r.critical
                .write(&mut out, "refreshd_critical_section_seconds");
        }
        gauge(
            &mut out,
            "refreshd_refreshes_pending",
            "Refreshes waiting now for a snap's processes to exit.",
            g.pending,
        );
        gauge(
            &mut out,
            "refreshd_refresh_pending_longest_seconds",
            "How long the refresh that has waited longest for apps has waited so far; 0 when none waits.",
            g.longest_wait_ms as f64 / 1000.0,
        );
        gauge(
            &mut out,
            "refreshd_changes_in_progress",
            "Changes not yet ready.",
            g.in_progress,
        );
        gauge(
            &mut out,
            "refreshd_snaps_installed",
            "Snaps with a current revision.",
            g.snaps,
        );
        head(
            &mut out,
            "refreshd_build_info",
            "gauge",
            "Always 1; the labels say which refreshd runs and how it tracks apps.",
        );
        let _ = writeln!(
            out,
            "refreshd_build_info{{version=\"{}\",tracking=\"{}\"}} 1",
            escape(&p.version),
            escape(&p.tracking)
        );
        gauge(
            &mut out,
            "process_start_time_seconds",
            "Start time of the process since the unix epoch in seconds.",
            p.start_time,
        );
        if let Some(cpu) = p.cpu_seconds {
            head(
                &mut out,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
            );
            let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
        }
        if let Some(rss) = p.resident_bytes {
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss,
            );
        }
        if let Some(fds) = p.open_fds {
            gauge(
                &mut out,
                "process_open_fds",
                "Number of open file descriptors.",
                fds,
            );
        }
        out
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\\', "\\\\"));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    head(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What is read from the state at each scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    pub pending: u64,
    pub longest_wait_ms: i64,
    pub in_progress: u64,
    pub snaps: u64,
}

/// The process's own figures; `None` where /proc could not say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessInfo {
    pub version: String,
    pub tracking: String,
    pub start_time: f64,
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

/// Reads the gauges: changes in progress, and those of them parked until a snap goes idle.
pub fn gauges(s: &refreshd_state::State, now_ms: i64) -> refreshd_state::Result<Gauges> {
    let mut g = Gauges {
        snaps: s.snaps()?.iter().filter(|r| r.current.is_some()).count() as u64,
        ..Gauges::default()
    };
    for c in s.changes(Select::InProgress, None)? {
        g.in_progress += 1;
        if !is_refresh(&c) {
            continue;
        }
        let tasks = s.tasks(c.id)?;
        if let Some(t) = waiting_for_apps(&tasks) {
            g.pending += 1;
            g.longest_wait_ms = g.longest_wait_ms.max(now_ms - wait_started(&tasks, t));
        }
    }
    Ok(g)
}

/// The task of a change that is parked until the snap's processes are gone, if any.
pub fn waiting_for_apps(tasks: &[TaskRow]) -> Option<&TaskRow> {
    tasks.iter().find(|t| {
        t.status == Status::Wait
            && t.wait_event
                .as_deref()
                .is_some_and(|e| e.starts_with(IDLE_EVENT))
    })
}

/// When task `t` could start (unix ms): when the last task it waits for became ready, or when
/// it was made, for a task that waits for none. A wait for apps counts from there, across
/// restarts of the daemon.
pub fn wait_started(tasks: &[TaskRow], t: &TaskRow) -> i64 {
    t.waits_for
        .iter()
        .filter_map(|id| tasks.iter().find(|o| o.id == *id)?.ready_time)
        .max()
        .unwrap_or(t.spawn_time)
}

/// Whether `change` is a refresh (it switches the snap to a revision): the only changes counted.
/// A remove or a restore waits for apps too.
fn is_refresh(change: &ChangeRow) -> bool {
    ChangeKind::parse(&change.kind).is_some_and(ChangeKind::switches_revision)
}

/// True for the steps [`observe_task`] learns from: the critical section's edges, done.
fn observes(t: &TaskRow, phase: Phase) -> bool {
    phase == Phase::Do
        && t.status == Status::Done
        && (t.kind == WAIT_FOR_APPS || t.kind == LIFT_INHIBITION)
}

fn observation(tasks: &[TaskRow], t: &TaskRow) -> Option<Observation> {
    let ready = t.ready_time?;
    match t.kind.as_str() {
        WAIT_FOR_APPS => {
            let waited = ready - wait_started(tasks, t);
            Some(Observation::Wait(waited as f64 / 1000.0))
        }
        LIFT_INHIBITION => {
            let entered = tasks.iter().find(|o| o.kind == WAIT_FOR_APPS)?;
            let start = stamp(entered, ENTERED).or_else(|| Some(ms_to_ns(entered.ready_time?)))?;
            let end = stamp(t, LEFT).unwrap_or(ms_to_ns(ready));
            Some(Observation::Critical(
                end.saturating_sub(start) as f64 / 1e9,
            ))
        }
        _ => None,
    }
}

fn ms_to_ns(ms: i64) -> u128 {
    u128::try_from(ms).unwrap_or(0) * 1_000_000
}

/// The last unix-ns stamp a task logged after `needle`.
fn stamp(t: &TaskRow, needle: &str) -> Option<u128> {
    t.log.iter().rev().find_map(|l| {
        let rest = &l[l.find(needle)? + needle.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

impl Observer for Metrics {
    /// Counts a change that has a critical section (a refresh) by kind and outcome.
    fn change_ready(&self, change: &ChangeRow, status: Status, tasks: &[TaskRow]) {
        if is_refresh(change) && tasks.iter().any(|t| t.kind == WAIT_FOR_APPS) {
            self.finished(&change.kind, Outcome::of(status));
        }
    }

    fn wants(&self, t: &TaskRow, phase: Phase) -> bool {
        observes(t, phase)
    }

    /// A wait for apps that ended, or a critical section that was left.
    fn task_step(&self, change: &ChangeRow, t: &TaskRow, phase: Phase, tasks: &[TaskRow]) {
        // A remove or a restore waits for apps too, but is no refresh.
        if !is_refresh(change) {
            return;
        }
        if let Some(o) = observes(t, phase).then(|| observation(tasks, t)).flatten() {
            self.observe(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, kind: &str, status: Status) -> TaskRow {
        TaskRow {
            id,
            change_id: 1,
            seq: id as u32,
            kind: kind.to_owned(),
            summary: kind.to_owned(),
            status,
            data: serde_json::json!({}),
            waits_for: if id > 1 { vec![id - 1] } else { vec![] },
            log: vec![],
            progress_label: String::new(),
            progress_done: 0,
            progress_total: 0,
            retry_count: 0,
            retry_reason: None,
            wait_until: None,
            wait_event: None,
            wait_reason: None,
            spawn_time: 1_000,
            ready_time: None,
        }
    }

    /// precopy-data done at 10 s, wait-for-apps done at 70 s entering at 70.000 s, lift at
    /// 70.25 s.
    fn refresh() -> Vec<TaskRow> {
        let mut precopy = task(1, "precopy-data", Status::Done);
        precopy.ready_time = Some(10_000);
        let mut wait = task(2, WAIT_FOR_APPS, Status::Done);
        wait.ready_time = Some(70_003);
        wait.log = vec![
            "2026-11-21T20:15:03Z waiting".into(),
            "2026-11-21T20:16:03Z no process of hello is left; critical section entered at=70000000000".into(),
        ];
        let mut lift = task(3, LIFT_INHIBITION, Status::Done);
        lift.ready_time = Some(70_260);
        lift.log = vec!["2026-11-21T20:16:03Z critical section left at=70250000000".into()];
        vec![precopy, wait, lift]
    }

    #[test]
    fn waits_count_from_the_end_of_the_task_before() {
        let tasks = refresh();
        assert_eq!(
            observation(&tasks, &tasks[1]),
            Some(Observation::Wait(60.003))
        );
        // A first task waits from its change's creation.
        let mut first = task(1, WAIT_FOR_APPS, Status::Done);
        first.ready_time = Some(3_500);
        assert_eq!(
            observation(std::slice::from_ref(&first), &first),
            Some(Observation::Wait(2.5))
        );
    }

    #[test]
    fn critical_section_from_the_logged_stamps() {
        let tasks = refresh();
        let Some(Observation::Critical(s)) = observation(&tasks, &tasks[2]) else {
            panic!("no observation");
        };
        assert!((s - 0.25).abs() < 1e-9, "{s}");
        // Without stamps (logs cut short), the commit times.
        let mut bare = refresh();
        bare[1].log.clear();
        bare[2].log.clear();
        let Some(Observation::Critical(s)) = observation(&bare, &bare[2]) else {
            panic!("no observation");
        };
        assert!((s - 0.257).abs() < 1e-9, "{s}");
    }

    #[test]
    fn only_finished_steps_of_the_two_edges_count() {
        let mut t = task(2, WAIT_FOR_APPS, Status::Wait);
        t.ready_time = Some(5);
        assert!(!observes(&t, Phase::Do));
        t.status = Status::Done;
        assert!(!observes(&t, Phase::Undo));
        assert!(observes(&t, Phase::Do));
        let other = task(2, "link", Status::Done);
        assert!(!observes(&other, Phase::Do));
    }

    #[test]
    fn pending_is_a_task_parked_until_the_snap_is_idle() {
        let mut tasks = refresh();
        tasks[1].status = Status::Wait;
        tasks[1].wait_event = Some("snap-idle:hello".into());
        assert_eq!(waiting_for_apps(&tasks).map(|t| t.id), Some(2));
        assert_eq!(wait_started(&tasks, &tasks[1]), 10_000);
        tasks[1].wait_event = Some("failpoint".into());
        assert!(waiting_for_apps(&tasks).is_none());
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 3.0, 100.0, -2.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x");
        assert_eq!(
            out,
            "x_bucket{le=\"1\"} 3\nx_bucket{le=\"10\"} 4\nx_bucket{le=\"+Inf\"} 5\nx_sum 104.5\nx_count 5\n"
        );
    }

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.finished("install", Outcome::Done);
        m.finished("refresh", Outcome::of(Status::Undone));
        m.observe(Observation::Wait(42.0));
        m.observe(Observation::Critical(0.02));
        let text = m.render(
            &Gauges {
                pending: 2,
                longest_wait_ms: 90_500,
                in_progress: 3,
                snaps: 4,
            },
            &ProcessInfo {
                version: "0.1.0".into(),
                tracking: "v2".into(),
                start_time: 1_790_000_000.5,
                cpu_seconds: Some(1.25),
                resident_bytes: None,
                open_fds: Some(9),
            },
        );
        for line in [
            "# TYPE refreshd_refreshes_total counter",
            "refreshd_refreshes_total{kind=\"install\",outcome=\"done\"} 1",
            "refreshd_refreshes_total{kind=\"install\",outcome=\"error\"} 0",
            "refreshd_refreshes_total{kind=\"refresh\",outcome=\"aborted\"} 1",
            "refreshd_refreshes_total{kind=\"revert\",outcome=\"done\"} 0",
            "# TYPE refreshd_refresh_wait_seconds histogram",
            "refreshd_refresh_wait_seconds_bucket{le=\"10\"} 0",
            "refreshd_refresh_wait_seconds_bucket{le=\"60\"} 1",
            "refreshd_refresh_wait_seconds_count 1",
            "refreshd_refresh_wait_seconds_sum 42",
            "refreshd_critical_section_seconds_bucket{le=\"0.01\"} 0",
            "refreshd_critical_section_seconds_bucket{le=\"0.025\"} 1",
            "refreshd_refreshes_pending 2",
            "refreshd_refresh_pending_longest_seconds 90.5",
            "refreshd_changes_in_progress 3",
            "refreshd_snaps_installed 4",
            "refreshd_build_info{version=\"0.1.0\",tracking=\"v2\"} 1",
            "process_start_time_seconds 1790000000.5",
            "process_cpu_seconds_total 1.25",
            "process_open_fds 9",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(!text.contains("process_resident_memory_bytes"));
        // Every sample belongs to a family declared just before it, once.
        let mut declared = vec![];
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!declared.contains(&name.to_owned()), "{name} twice");
                declared.push(name.to_owned());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = declared.last().unwrap();
                assert!(name.starts_with(family.as_str()), "{l} after {family}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
