//! Showing a change as it progresses (`watch`, and `install`/`remove` while they wait).

use std::collections::HashMap;
use std::io::{self, Write};

use refreshd_snap::text::json_printable;

use super::format::for_terminal;
use crate::types::{Change, Progress, Status, Task};

/// How to show the states of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A line per task status change (and per new retry or wait reason, and per 10% of
    /// progress): for logs and pipes.
    Lines,
    /// One line redrawn in place, with a progress bar while a task reports how far it got:
    /// for a terminal.
    Live,
    /// Every state as a line of JSON (NDJSON), exactly as the API sends it.
    Json,
}

/// Longest live line, so that it does not wrap on a usual terminal (its width is not asked).
const LIVE_WIDTH: usize = 79;
/// Width of the bar between its brackets: as wide as the line leaves room for, within these.
const BAR_MAX: usize = 20;
const BAR_MIN: usize = 10;
/// The task's summary (with its `[N/M]`) is shortened down to this before the sizes give way.
const HEAD_MIN: usize = 20;
/// Lines mode prints a task's progress at most once per this many percent.
const LINES_STEP: u64 = 10;

/// What was last shown of a task, to print only what changed.
#[derive(Default, PartialEq, Eq)]
struct Seen {
    status: Option<Status>,
    retry: Option<u32>,
    wait: Option<String>,
    /// The progress label and the step (a multiple of [`LINES_STEP`]) last printed.
    step: Option<(String, u64)>,
}

pub struct Follower<W: Write> {
    out: W,
    mode: Mode,
    seen: HashMap<u64, Seen>,
    live_line: bool,
}

impl<W: Write> Follower<W> {
    pub fn new(out: W, mode: Mode) -> Self {
        Follower {
            out,
            mode,
            seen: HashMap::new(),
            live_line: false,
        }
    }

    pub fn show(&mut self, change: &Change) -> io::Result<()> {
        match self.mode {
            Mode::Json => {
                let text = serde_json::to_string(change)?;
                self.out.write_all(json_printable(&text).as_bytes())?;
                self.out.write_all(b"\n")?;
            }
            // Wait and retry reasons quote command lines and store messages: escaped first.
            Mode::Lines => self.lines(&for_terminal(change))?,
            Mode::Live => {
                let line = live_line(&for_terminal(change), LIVE_WIDTH);
                write!(self.out, "\r\x1b[K{line}")?;
                self.live_line = true;
            }
        }
        self.out.flush()
    }

    /// Clears the live line, so what follows starts on a clean line.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.live_line {
            write!(self.out, "\r\x1b[K")?;
            self.live_line = false;
        }
        self.out.flush()
    }

    fn lines(&mut self, change: &Change) -> io::Result<()> {
        for task in &change.tasks {
            let seen = self.seen.entry(task.id).or_default();
            // A task still waiting its turn is not news.
            let was = seen.status.unwrap_or(Status::Do);
            if task.status != was {
                writeln!(self.out, "{:<8} {}", task.status, task.summary)?;
            }
            seen.status = Some(task.status);
            let retry = task.retry.as_ref().map(|r| r.count);
            if retry.is_some() && retry != seen.retry {
                if let Some(r) = &task.retry {
                    writeln!(
                        self.out,
                        "{:<8} {}: {} (retry {})",
                        "", task.summary, r.reason, r.count
                    )?;
                }
            }
            seen.retry = retry;
            let wait = task.wait.as_ref().map(|w| w.reason.clone());
            if wait.is_some() && wait != seen.wait {
                if let Some(w) = &task.wait {
                    writeln!(self.out, "{:<8} {}: {}", "", task.summary, w.reason)?;
                }
            }
            seen.wait = wait;
            // Progress only when it crosses the next 10% step, so logs stay short. Without a
            // total there are no steps: nothing is printed.
            let p = &task.progress;
            if matches!(task.status, Status::Doing | Status::Undoing) && p.total > 0 {
                let step = percent(p) / LINES_STEP * LINES_STEP;
                let last = match &seen.step {
                    Some((label, s)) if *label == p.label => *s,
                    _ => 0,
                };
                if step > last {
                    let amounts = amounts(p);
                    writeln!(
                        self.out,
                        "{:<8} {}: {}",
                        "",
                        task.summary,
                        amounts.trim_start()
                    )?;
                    seen.step = Some((p.label.clone(), step));
                }
            }
        }
        Ok(())
    }
}

/// `[3/9] Download snap "hello" (2): [########............]  42%  4.2 MB / 10.0 MB`, at most
/// `width` characters.
fn live_line(change: &Change, width: usize) -> String {
    let total = change.tasks.len();
    let finished = change.tasks.iter().filter(|t| t.status.is_ready()).count();
    let Some(task) = current_task(change) else {
        return truncate(&format!("{} {}", change.status, change.summary), width);
    };
    let mut head = task.summary.clone();
    if matches!(task.status, Status::Undoing | Status::Undo) {
        head = format!("undoing {head}");
    }
    let head = format!("[{finished}/{total}] {head}");
    let detail = if let Some(wait) = &task.wait {
        Some(wait.reason.clone())
    } else if let Some(retry) = &task.retry {
        Some(format!("{} (retry {})", retry.reason, retry.count))
    } else if task.progress.total > 0 {
        return bar_line(&head, &task.progress, width);
    } else if task.progress.done > 0 {
        // How much, but not of what total: no bar.
        let p = &task.progress;
        Some(match p.label.as_str() {
            "" => human(p.done),
            label => format!("{label} {}", human(p.done)),
        })
    } else {
        None
    };
    match detail {
        Some(d) => truncate(&format!("{head}: {d}"), width),
        None => truncate(&head, width),
    }
}

/// `HEAD: [####......] PCT%  DONE / TOTAL` in `width`: the bar takes what the head leaves
/// (between [`BAR_MIN`] and [`BAR_MAX`]); when room is short the head is shortened first (down
/// to [`HEAD_MIN`]), then the sizes go, then the bar.
fn bar_line(head: &str, p: &Progress, width: usize) -> String {
    let pct = percent(p);
    let head_len = head.chars().count();
    for stats in [amounts(p), format!("{pct:>3}%")] {
        // ": [" + bar + "] " + stats
        let Some(room) = width.checked_sub(5 + stats.chars().count()) else {
            continue;
        };
        let bar = room.saturating_sub(head_len).clamp(BAR_MIN, BAR_MAX);
        let Some(head_room) = room.checked_sub(bar) else {
            continue;
        };
        if head_room < head_len.min(HEAD_MIN) {
            continue;
        }
        return format!(
            "{}: [{}] {stats}",
            truncate(head, head_room),
            bar_of(p, bar)
        );
    }
    let tail = format!(": {pct}%");
    match width.checked_sub(tail.chars().count()) {
        Some(room) if room > 0 => format!("{}{tail}", truncate(head, room)),
        _ => truncate(&format!("{head}{tail}"), width),
    }
}

/// `width` characters: `#` for the part done, `.` for the rest.
fn bar_of(p: &Progress, width: usize) -> String {
    let filled = if p.total == 0 {
        0
    } else {
        (u128::from(p.done.min(p.total)) * width as u128 / u128::from(p.total)) as usize
    };
    format!("{}{}", "#".repeat(filled), ".".repeat(width - filled))
}

/// ` 42%  4.2 MB / 10.0 MB`: the percentage right-aligned, so a redrawn line keeps its shape.
fn amounts(p: &Progress) -> String {
    format!("{:>3}%  {} / {}", percent(p), human(p.done), human(p.total))
}

/// Whole percent done, rounded down (100 only when all is done); 0 for an unknown total.
fn percent(p: &Progress) -> u64 {
    if p.total == 0 {
        return 0;
    }
    (u128::from(p.done.min(p.total)) * 100 / u128::from(p.total)) as u64
}

/// A byte count for people, in powers of 1000 with one decimal: `512 B`, `4.2 MB`, `1.0 GB`.
fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    // Move up when one decimal would round to 1000 (999999 is 1.0 MB, not 1000.0 kB).
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The task most worth showing: one running, else one waiting, else the next to run.
fn current_task(change: &Change) -> Option<&Task> {
    let find = |pred: &dyn Fn(Status) -> bool| change.tasks.iter().find(|t| pred(t.status));
    find(&|s| matches!(s, Status::Doing | Status::Undoing))
        .or_else(|| find(&|s| s == Status::Wait))
        .or_else(|| find(&|s| !s.is_ready()))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Progress, RetryInfo, WaitInfo};

    fn ts() -> jiff::Timestamp {
        "2026-11-21T20:15:03Z".parse().unwrap()
    }

    fn task(id: u64, summary: &str, status: Status) -> Task {
        Task {
            id,
            kind: "k".into(),
            summary: summary.into(),
            status,
            progress: Progress::default(),
            log: vec![],
            retry: None,
            wait: None,
            spawn_time: ts(),
            ready_time: None,
        }
    }

    fn change(tasks: Vec<Task>) -> Change {
        let status = if tasks.iter().all(|t| t.status == Status::Done) {
            Status::Done
        } else {
            Status::Doing
        };
        Change {
            id: 7,
            kind: "install".into(),
            summary: "Install \"hello\" from file".into(),
            snap: Some("hello".into()),
            status,
            ready: status.is_ready(),
            spawn_time: ts(),
            ready_time: None,
            error: None,
            tasks,
        }
    }

    fn render(mode: Mode, states: &[Change]) -> String {
        let mut f = Follower::new(Vec::new(), mode);
        for s in states {
            f.show(s).unwrap();
        }
        f.finish().unwrap();
        String::from_utf8(f.out).unwrap()
    }

    #[test]
    fn lines_show_each_status_change_once() {
        let mut mount = task(2, "Mount", Status::Doing);
        mount.retry = Some(RetryInfo {
            count: 1,
            reason: "loop device busy".into(),
            next_attempt: ts(),
        });
        let mut wait = task(2, "Mount", Status::Wait);
        wait.wait = Some(WaitInfo {
            event: "snap-idle:hello".into(),
            until: None,
            reason: "waiting for 2 processes to exit".into(),
        });
        let states = [
            change(vec![
                task(1, "Prepare", Status::Doing),
                task(2, "Mount", Status::Do),
            ]),
            change(vec![task(1, "Prepare", Status::Done), mount.clone()]),
            change(vec![task(1, "Prepare", Status::Done), mount]),
            change(vec![task(1, "Prepare", Status::Done), wait]),
            change(vec![
                task(1, "Prepare", Status::Done),
                task(2, "Mount", Status::Done),
            ]),
        ];
        assert_eq!(
            render(Mode::Lines, &states),
            "\
Doing    Prepare
Done     Prepare
Doing    Mount
         Mount: loop device busy (retry 1)
Wait     Mount
         Mount: waiting for 2 processes to exit
Done     Mount
"
        );
    }

    #[test]
    fn json_is_one_change_per_line() {
        let states = [
            change(vec![task(1, "Prepare", Status::Doing)]),
            change(vec![task(1, "Prepare", Status::Done)]),
        ];
        let out = render(Mode::Json, &states);
        let parsed: Vec<Change> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed, states);
    }

    #[test]
    fn live_line_redraws_in_place() {
        let mut copy = task(2, "Copy snap data", Status::Doing);
        copy.progress = Progress {
            label: "copying".into(),
            done: 2,
            total: 5,
        };
        let states = [change(vec![task(1, "Prepare", Status::Done), copy])];
        assert_eq!(
            render(Mode::Live, &states),
            "\r\x1b[K[1/2] Copy snap data: [########............]  40%  2 B / 5 B\r\x1b[K"
        );
        let long = "x".repeat(200);
        assert_eq!(truncate(&long, LIVE_WIDTH).chars().count(), LIVE_WIDTH);
    }

    const DOWNLOAD: &str = "Download snap \"hello\" (2)";

    /// A refresh of nine tasks, two done, the download running with `progress`.
    fn downloading(label: &str, done: u64, total: u64) -> Change {
        let mut tasks = vec![
            task(1, "Before", Status::Done),
            task(2, "Before", Status::Done),
        ];
        let mut dl = task(3, DOWNLOAD, Status::Doing);
        dl.progress = Progress {
            label: label.into(),
            done,
            total,
        };
        tasks.push(dl);
        tasks.extend((4..=9).map(|id| task(id, "After", Status::Do)));
        change(tasks)
    }

    fn live(done: u64, total: u64, width: usize) -> String {
        let line = live_line(&downloading("download", done, total), width);
        assert!(
            line.chars().count() <= width,
            "{line:?} is wider than {width}"
        );
        line
    }

    #[test]
    fn live_bar_at_0_42_and_100_percent() {
        assert_eq!(
            live(0, 10_000_000, LIVE_WIDTH),
            "[2/9] Download snap \"hello\" (2): [....................]   0%  0 B / 10.0 MB"
        );
        assert_eq!(
            live(4_200_000, 10_000_000, LIVE_WIDTH),
            "[2/9] Download snap \"hello\" (2): [########............]  42%  4.2 MB / 10.0 MB"
        );
        // 99.99% is not shown as done.
        assert!(live(9_999_999, 10_000_000, LIVE_WIDTH).contains("[###################.]  99%"));
        assert_eq!(
            live(10_000_000, 10_000_000, LIVE_WIDTH),
            "[2/9] Download snap \"hello\" (2): [####################] 100%  10.0 MB / 10.0 MB"
        );
        // More than the total (a store that lied) is 100%, not a longer bar.
        assert!(live(12_000_000, 10_000_000, LIVE_WIDTH).contains("[####################] 100%"));
    }

    #[test]
    fn live_progress_of_unknown_total_shows_the_amount() {
        let mut c = downloading("copy-data", 4_200_000, 0);
        c.tasks[2].summary = "Set up data of snap \"hello\" (x2)".into();
        assert_eq!(
            live_line(&c, LIVE_WIDTH),
            "[2/9] Set up data of snap \"hello\" (x2): copy-data 4.2 MB"
        );
        // Nothing done yet and no total: no progress at all.
        assert_eq!(
            live_line(&downloading("", 0, 0), LIVE_WIDTH),
            "[2/9] Download snap \"hello\" (2)"
        );
    }

    #[test]
    fn live_bar_fits_narrow_lines() {
        // A long summary gives way first, and the bar shrinks to its least.
        let mut c = downloading("download", 4_200_000, 10_000_000);
        c.tasks[2].summary = format!("{DOWNLOAD} from http://store.example.com/a/long/path/to/it");
        let line = live_line(&c, LIVE_WIDTH);
        assert_eq!(line.chars().count(), LIVE_WIDTH, "{line}");
        assert!(
            line.ends_with("…: [####......]  42%  4.2 MB / 10.0 MB"),
            "{line}"
        );
        // Narrower: the sizes go, then the summary shrinks further.
        assert_eq!(
            live(4_200_000, 10_000_000, 40),
            "[2/9] Download snap …: [####......]  42%"
        );
        // Narrower still: the bar goes too; the percentage stays.
        assert_eq!(live(4_200_000, 10_000_000, 20), "[2/9] Download…: 42%");
        assert_eq!(live(4_200_000, 10_000_000, 4), "[2/…");
    }

    #[test]
    fn human_sizes_in_powers_of_1000() {
        for (n, s) in [
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (4_200_000, "4.2 MB"),
            (999_949, "999.9 kB"),
            (999_999, "1.0 MB"),
            (10_000_000_000, "10.0 GB"),
            (u64::MAX, "18.4 EB"),
        ] {
            assert_eq!(human(n), s, "{n}");
        }
    }

    #[test]
    fn lines_show_progress_once_per_10_percent_step() {
        let mut states: Vec<Change> = [5, 12, 18, 35, 41, 41, 100]
            .into_iter()
            .map(|pct| downloading("download", pct * 100_000, 10_000_000))
            .collect();
        let mut done = downloading("download", 10_000_000, 10_000_000);
        done.tasks[2].status = Status::Done;
        states.push(done);
        assert_eq!(
            render(Mode::Lines, &states),
            "\
Done     Before
Done     Before
Doing    Download snap \"hello\" (2)
         Download snap \"hello\" (2): 12%  1.2 MB / 10.0 MB
         Download snap \"hello\" (2): 35%  3.5 MB / 10.0 MB
         Download snap \"hello\" (2): 41%  4.1 MB / 10.0 MB
         Download snap \"hello\" (2): 100%  10.0 MB / 10.0 MB
Done     Download snap \"hello\" (2)
"
        );
        // No total, no steps: the amount is not printed line by line.
        let unknown = [
            downloading("copy-data", 1_000, 0),
            downloading("copy-data", 9_000_000, 0),
        ];
        assert!(!render(Mode::Lines, &unknown).contains("copy-data"));
    }

    /// A wait reason quoting a command line its user made hostile (`exec -a`), and a retry
    /// reason quoting a store: neither mode lets a control character through; the live line's
    /// own `\r\x1b[K` is the only sequence on the terminal.
    #[test]
    fn hostile_reasons_reach_no_terminal() {
        let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nFAKE root: done\u{9b}31m\u{202e}";
        let mut wait = task(2, evil, Status::Wait);
        wait.wait = Some(WaitInfo {
            event: "snap-idle:hello".into(),
            until: None,
            reason: evil.into(),
        });
        let mut retry = task(3, "Download", Status::Doing);
        retry.retry = Some(RetryInfo {
            count: 1,
            reason: evil.into(),
            next_attempt: ts(),
        });
        let states = [change(vec![wait]), change(vec![retry])];
        let lines = render(Mode::Lines, &states);
        let live = render(Mode::Live, &states).replace("\r\x1b[K", "");
        for (mode, out) in [("lines", lines), ("live", live)] {
            assert!(
                !out.chars()
                    .any(|c| c != '\n' && refreshd_snap::text::escapes(c)),
                "{mode}: {out:?}"
            );
            assert!(!out.contains("\nFAKE"), "{mode}: {out}");
            assert!(
                out.contains("\\u{1b}]0;pwned"),
                "{mode}: shown escaped: {out}"
            );
        }
        let json = render(Mode::Json, &states);
        assert!(
            !json
                .chars()
                .any(|c| c != '\n' && refreshd_snap::text::escapes(c)),
            "{json:?}"
        );
    }
}
