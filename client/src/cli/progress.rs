//! Showing a change as it progresses (`watch`, and `install`/`remove` while they wait), and the
//! long phases refreshctl works through itself (uploading, packing, publishing).

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

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

/// Longest live line when the terminal does not say its width: one that does not wrap on the
/// usual 80 columns.
const LIVE_WIDTH: usize = 79;
/// Width of the bar between its brackets: as wide as the line leaves room for, within these.
const BAR_MAX: usize = 20;
const BAR_MIN: usize = 10;
/// The task's summary (with its `[N/M]`) is shortened down to this before the sizes give way.
const HEAD_MIN: usize = 20;
/// A wait reason is shortened down to this before the hint gives way.
const REASON_MIN: usize = 12;
/// Lines mode prints a task's progress at most once per this many percent.
const LINES_STEP: u64 = 10;
/// A [`Meter`] redraws at most this often (and always at the start and the end).
const METER_EVERY: Duration = Duration::from_millis(100);

/// How wide a live line may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// This many characters, whatever the output is.
    Fixed(usize),
    /// As wide as the terminal on standard output is now.
    Stdout,
    /// As wide as the terminal on standard error is now.
    Stderr,
}

impl Width {
    /// Asked again at every redraw, so that a resized terminal is honoured at once (the caller
    /// redraws on SIGWINCH).
    fn chars(self) -> usize {
        let size = match self {
            Width::Fixed(n) => return n,
            Width::Stdout => rustix::termios::tcgetwinsize(io::stdout()),
            Width::Stderr => rustix::termios::tcgetwinsize(io::stderr()),
        };
        line_width(size.ok().map(|s| s.ws_col))
    }
}

/// The longest line for a terminal of `columns`: one less, so the cursor never reaches the last
/// column, where some terminals wrap at once. [`LIVE_WIDTH`] when it is unknown (not a
/// terminal, or a terminal that says 0, as a pseudo-terminal nobody sized does).
fn line_width(columns: Option<u16>) -> usize {
    match columns {
        Some(c) if c > 0 => usize::from(c) - 1,
        _ => LIVE_WIDTH,
    }
}

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
    width: Width,
    seen: HashMap<u64, Seen>,
    /// The state on the live line (escaped), to draw again at a new width.
    live: Option<Change>,
}

impl<W: Write> Follower<W> {
    pub fn new(out: W, mode: Mode) -> Self {
        Follower {
            out,
            mode,
            width: Width::Fixed(LIVE_WIDTH),
            seen: HashMap::new(),
            live: None,
        }
    }

    /// Fits the live line to `width` rather than [`LIVE_WIDTH`] characters.
    pub fn width(mut self, width: Width) -> Self {
        self.width = width;
        self
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
                self.live = Some(for_terminal(change));
                return self.redraw();
            }
        }
        self.out.flush()
    }

    /// Draws the live line again, at the width the terminal has now (after SIGWINCH).
    pub fn redraw(&mut self) -> io::Result<()> {
        if let Some(change) = &self.live {
            let line = live_line(change, self.width.chars());
            write!(self.out, "\r\x1b[K{line}")?;
            self.out.flush()?;
        }
        Ok(())
    }

    /// Clears the live line, so what follows starts on a clean line.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.live.take().is_some() {
            write!(self.out, "\r\x1b[K")?;
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
                    let hint = Hint::of(change);
                    writeln!(
                        self.out,
                        "{:<8} {}: {} — {}",
                        "",
                        task.summary,
                        w.reason,
                        hint.long()
                    )?;
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
                    let label = match shown_label(task) {
                        Some(label) => format!("{label} "),
                        None => String::new(),
                    };
                    writeln!(
                        self.out,
                        "{:<8} {}: {label}{}",
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

/// What to do about a change that waits: see what it waits for, or give it up.
struct Hint {
    see: String,
    cancel: String,
}

impl Hint {
    fn of(change: &Change) -> Hint {
        Hint {
            // `status NAME` lists the processes a refresh waits for, and the change.
            see: match &change.snap {
                Some(name) => format!("refreshctl status {name}"),
                None => format!("refreshctl tasks {}", change.id),
            },
            cancel: format!("refreshctl abort {}", change.id),
        }
    }

    fn long(&self) -> String {
        format!("see: {}; cancel: {}", self.see, self.cancel)
    }

    /// Without the abort: `status NAME` names the change, so nothing is lost for good.
    fn short(&self) -> String {
        format!("see: {}", self.see)
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
    let mut summary = task.summary.clone();
    if matches!(task.status, Status::Undoing | Status::Undo) {
        summary = format!("undoing {summary}");
    }
    let count = format!("[{finished}/{total}]");
    let head = format!("{count} {summary}");
    let detail = if let Some(wait) = &task.wait {
        return wait_line(&count, &head, &wait.reason, &Hint::of(change), width);
    } else if let Some(retry) = &task.retry {
        Some(format!("{} (retry {})", retry.reason, retry.count))
    } else if task.progress.total > 0 {
        return bar_line(&head, shown_label(task), &task.progress, width);
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

/// The progress label worth showing beside a bar: not one the summary already says
/// (`download` of "Download snap ...").
fn shown_label(task: &Task) -> Option<&str> {
    let label = task.progress.label.as_str();
    let said = task.summary.to_lowercase().contains(&label.to_lowercase());
    (!label.is_empty() && !said).then_some(label)
}

/// `HEAD: REASON — see: refreshctl status NAME; cancel: refreshctl abort ID` in `width`. The
/// hint is what to do, so it goes last: first the summary gives way (down to [`HEAD_MIN`]),
/// then the reason (down to [`REASON_MIN`]), then the summary altogether (the reason says what
/// is awaited), then `[N/M]`, then the abort (`status NAME` names the change); the hint goes
/// only when not even that fits.
fn wait_line(count: &str, head: &str, reason: &str, hint: &Hint, width: usize) -> String {
    let len = |s: &str| s.chars().count();
    let reason_min = len(reason).min(REASON_MIN);
    for hint in [hint.long(), hint.short()] {
        let tail = format!(" — {hint}");
        let Some(room) = width.checked_sub(len(&tail)) else {
            continue;
        };
        // HEAD: REASON
        if let Some(r) = room.checked_sub(2) {
            let head_min = len(head).min(HEAD_MIN);
            let head_room = r.saturating_sub(len(reason)).clamp(head_min, len(head));
            if head_room <= r && r - head_room >= reason_min {
                let reason = truncate(reason, r - head_room);
                return format!("{}: {reason}{tail}", truncate(head, head_room));
            }
        }
        // [N/M] REASON, then REASON
        for lead in [format!("{count} "), String::new()] {
            if let Some(r) = room.checked_sub(len(&lead)).filter(|r| *r >= reason_min) {
                return format!("{lead}{}{tail}", truncate(reason, r));
            }
        }
    }
    truncate(&format!("{head}: {reason}"), width)
}

/// `HEAD: [####......] PCT%  DONE / TOTAL`, or with a label `HEAD: LABEL [####......] ...`,
/// in `width`: the bar takes what the head leaves (between [`BAR_MIN`] and [`BAR_MAX`]); when
/// room is short the head is shortened first (down to [`HEAD_MIN`], the label kept while the
/// rest of the head can keep that much), then the sizes go, then the bar.
fn bar_line(head: &str, label: Option<&str>, p: &Progress, width: usize) -> String {
    let (head, sep) = match label {
        Some(label) => (
            Head {
                text: format!("{head}: {label}"),
                keep: label.chars().count() + 2,
            },
            " ",
        ),
        None => (
            Head {
                text: head.to_string(),
                keep: 0,
            },
            ": ",
        ),
    };
    let pct = percent(p);
    let head_len = head.text.chars().count();
    for stats in [amounts(p), format!("{pct:>3}%")] {
        // sep + "[" + bar + "] " + stats
        let Some(room) = width.checked_sub(sep.len() + 3 + stats.chars().count()) else {
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
            "{}{sep}[{}] {stats}",
            head.truncate(head_room),
            bar_of(p, bar)
        );
    }
    let tail = format!("{sep}{pct}%");
    match width.checked_sub(tail.chars().count()) {
        Some(room) if room > 0 => format!("{}{tail}", head.truncate(room)),
        _ => truncate(&format!("{}{tail}", head.text), width),
    }
}

/// A head whose last `keep` characters (`: LABEL`) outlast the rest when it is shortened.
struct Head {
    text: String,
    keep: usize,
}

impl Head {
    fn truncate(&self, max: usize) -> String {
        let len = self.text.chars().count();
        let rest = len - self.keep;
        if len <= max || self.keep == 0 || max < self.keep + rest.min(HEAD_MIN) {
            return truncate(&self.text, max);
        }
        let kept: String = self.text.chars().skip(rest).collect();
        let rest: String = self.text.chars().take(rest).collect();
        format!("{}{kept}", truncate(&rest, max - self.keep))
    }
}

/// A live line for work refreshctl does itself (`Uploading hello_1.0_all.snap: [###...] 42%
/// 8.4 MB / 20.0 MB`), on a terminal only: redrawn in place, at most every [`METER_EVERY`]
/// and always at the start and the end, fitted to the terminal's width at each redraw.
pub struct Meter<W: Write> {
    out: W,
    width: Width,
    head: String,
    last: Option<(Instant, u64, u64)>,
}

impl Meter<io::Stderr> {
    /// A meter on standard error when it is a terminal; none otherwise, so that logs and pipes
    /// get no carriage returns (what the command does is said when it is done).
    pub fn on_stderr(head: String) -> Option<Self> {
        io::stderr()
            .is_terminal()
            .then(|| Meter::new(io::stderr(), Width::Stderr, head))
    }
}

impl<W: Write> Meter<W> {
    pub fn new(out: W, width: Width, head: String) -> Self {
        Meter {
            out,
            width,
            head,
            last: None,
        }
    }

    pub fn set_head(&mut self, head: String) {
        self.head = head;
    }

    /// `done` of `total` bytes; without a total, the head alone. A broken terminal is no reason
    /// to stop the work: what cannot be written is dropped.
    pub fn show(&mut self, done: u64, total: u64) {
        let now = Instant::now();
        let due = match self.last {
            None => true,
            Some((_, d, t)) if (d, t) == (done, total) => false,
            Some(_) if done >= total => true,
            Some((at, _, _)) => now.duration_since(at) >= METER_EVERY,
        };
        if !due {
            return;
        }
        self.last = Some((now, done, total));
        let width = self.width.chars();
        let line = if total == 0 {
            truncate(&self.head, width)
        } else {
            let p = Progress {
                label: String::new(),
                done,
                total,
            };
            bar_line(&self.head, None, &p, width)
        };
        let _ = write!(self.out, "\r\x1b[K{line}").and_then(|()| self.out.flush());
    }

    /// Clears the line, so what follows starts on a clean line.
    pub fn finish(&mut self) {
        if self.last.take().is_some() {
            let _ = write!(self.out, "\r\x1b[K").and_then(|()| self.out.flush());
        }
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
pub fn human(n: u64) -> String {
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
         Mount: waiting for 2 processes to exit — see: refreshctl status hello; cancel: refreshctl abort 7
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
            "\r\x1b[K[1/2] Copy snap data: copying [########............]  40%  2 B / 5 B\r\x1b[K"
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
    #[test]
    fn the_line_is_one_narrower_than_the_terminal() {
        assert_eq!(line_width(Some(50)), 49);
        assert_eq!(line_width(Some(200)), 199);
        assert_eq!(line_width(Some(1)), 0);
        // A pseudo-terminal nobody sized, or no terminal at all.
        assert_eq!(line_width(Some(0)), LIVE_WIDTH);
        assert_eq!(line_width(None), LIVE_WIDTH);
        // Not a terminal: the fallback, asked of whatever the tests' output is.
        if !io::stderr().is_terminal() {
            assert_eq!(Width::Stderr.chars(), LIVE_WIDTH);
        }
        assert_eq!(Width::Fixed(33).chars(), 33);
    }

    #[test]
    fn wide_terminals_get_the_whole_line_and_narrow_ones_a_shorter_one() {
        let mut c = downloading("download", 4_200_000, 10_000_000);
        c.tasks[2].summary = format!("{DOWNLOAD} from http://store.example.com/a/long/path/to/it");
        let wide = live_line(&c, 199);
        assert_eq!(
            wide,
            "[2/9] Download snap \"hello\" (2) from http://store.example.com/a/long/path/to/it: \
             [########............]  42%  4.2 MB / 10.0 MB"
        );
        let narrow = live_line(&c, 49);
        assert_eq!(
            narrow,
            "[2/9] Download snap \"hello\" (…: [####......]  42%"
        );
        for width in 0..=200 {
            let line = live_line(&c, width);
            assert!(line.chars().count() <= width, "{width}: {line}");
        }
    }

    /// A refresh of eleven tasks, four done, waiting for the app with `reason`.
    fn waiting(snap: Option<&str>, reason: &str) -> Change {
        let mut tasks: Vec<Task> = (1..=4).map(|id| task(id, "Before", Status::Done)).collect();
        let mut wait = task(
            5,
            "Wait for the apps of snap \"hello\" to exit",
            Status::Wait,
        );
        wait.wait = Some(WaitInfo {
            event: "snap-idle:hello".into(),
            until: None,
            reason: reason.into(),
        });
        tasks.push(wait);
        tasks.extend((6..=11).map(|id| task(id, "After", Status::Do)));
        let mut c = change(tasks);
        c.snap = snap.map(String::from);
        c
    }

    const REASON: &str =
        "waiting for 1 process to exit: pid 4242 (user alice): /snap/hello/x1/bin/hello --window";

    #[test]
    fn a_wait_says_what_to_do_about_it() {
        let c = waiting(Some("hello"), REASON);
        let hint = "see: refreshctl status hello; cancel: refreshctl abort 7";
        // Room for everything.
        assert_eq!(
            live_line(&c, 250),
            format!("[4/11] Wait for the apps of snap \"hello\" to exit: {REASON} — {hint}")
        );
        // The summary gives way first, then the reason.
        assert_eq!(
            live_line(&c, 150),
            format!(
                "[4/11] Wait for the…: waiting for 1 process to exit: pid 4242 (user alice): \
                 /snap/hello/x1… — {hint}"
            )
        );
        // Then the summary goes, the count stays.
        assert_eq!(live_line(&c, 79), format!("[4/11] waiting for … — {hint}"));
        // Then the abort goes (`status hello` names the change), and the count.
        assert_eq!(
            live_line(&c, 49),
            "waiting for 1 pro… — see: refreshctl status hello"
        );
        assert_eq!(
            live_line(&c, 45),
            "waiting for 1… — see: refreshctl status hello"
        );
        // No room for a hint worth having: the reason, shortened.
        assert_eq!(live_line(&c, 30), "[4/11] Wait for the apps of s…");
        for width in 0..=250 {
            let line = live_line(&c, width);
            assert!(line.chars().count() <= width, "{width}: {line}");
            if width >= 45 {
                assert!(line.contains("refreshctl status hello"), "{width}: {line}");
            }
            if width >= 75 {
                assert!(line.contains("refreshctl abort 7"), "{width}: {line}");
            }
        }
        // A short reason is not padded; a change of no snap points at its tasks.
        let c = waiting(None, "waiting for a hook");
        assert_eq!(
            live_line(&c, 79),
            "[4/11] waiting for a hook — see: refreshctl tasks 7; cancel: refreshctl abort 7"
        );
    }

    #[test]
    fn lines_say_what_to_do_about_a_wait() {
        let out = render(Mode::Lines, &[waiting(Some("hello"), REASON)]);
        assert!(
            out.ends_with(&format!(
                "Wait     Wait for the apps of snap \"hello\" to exit\n         \
                 Wait for the apps of snap \"hello\" to exit: {REASON} — see: refreshctl \
                 status hello; cancel: refreshctl abort 7\n"
            )),
            "{out}"
        );
    }

    #[test]
    fn a_resized_terminal_gets_the_line_redrawn_to_its_width() {
        let mut f = Follower::new(Vec::new(), Mode::Live).width(Width::Fixed(120));
        f.show(&waiting(Some("hello"), REASON)).unwrap();
        f.width = Width::Fixed(49);
        f.redraw().unwrap();
        f.finish().unwrap();
        // Nothing to redraw once finished.
        f.redraw().unwrap();
        let out = String::from_utf8(f.out).unwrap();
        let lines: Vec<&str> = out.split("\r\x1b[K").collect();
        assert_eq!(lines.len(), 4, "{out:?}");
        assert_eq!(lines[0], "");
        assert!(lines[1].contains("refreshctl abort 7"), "{}", lines[1]);
        assert_eq!(
            lines[2],
            "waiting for 1 pro… — see: refreshctl status hello"
        );
        assert_eq!(lines[3], "");
    }

    #[test]
    fn a_label_the_summary_does_not_say_is_shown() {
        let mut c = downloading("verifying", 4_200_000, 10_000_000);
        c.tasks[2].summary = "Prepare snap \"hello\" (x1)".into();
        assert_eq!(
            live_line(&c, LIVE_WIDTH),
            "[2/9] Prepare snap \"hello\" (x1): verifying [####.......]  42%  4.2 MB / 10.0 MB"
        );
        assert_eq!(live_line(&c, 20), "[2/9] Prepare s… 42%");
        let out = render(Mode::Lines, &[c]);
        assert!(
            out.contains("Prepare snap \"hello\" (x1): verifying 42%  4.2 MB / 10.0 MB\n"),
            "{out}"
        );
    }

    fn meter(width: usize) -> Meter<Vec<u8>> {
        Meter::new(
            Vec::new(),
            Width::Fixed(width),
            "Uploading hello_1.0_all.snap".into(),
        )
    }

    #[test]
    fn a_meter_draws_the_start_and_the_end_and_little_between() {
        let mut m = meter(LIVE_WIDTH);
        m.show(0, 20_000_000);
        // Redrawn no more than every METER_EVERY: these come too soon after the first.
        for done in (1..100).map(|i| i * 100_000) {
            m.show(done, 20_000_000);
        }
        m.show(20_000_000, 20_000_000);
        // The same again is not news.
        m.show(20_000_000, 20_000_000);
        m.finish();
        let out = String::from_utf8(m.out).unwrap();
        let lines: Vec<&str> = out.split("\r\x1b[K").skip(1).collect();
        assert_eq!(
            lines,
            [
                "Uploading hello_1.0_all.snap: [....................]   0%  0 B / 20.0 MB",
                "Uploading hello_1.0_all.snap: [####################] 100%  20.0 MB / 20.0 MB",
                "",
            ],
            "{out:?}"
        );
    }

    #[test]
    fn a_meter_fits_its_width_and_shows_the_head_without_a_total() {
        let mut m = meter(30);
        m.show(8_400_000, 20_000_000);
        let mut n = meter(LIVE_WIDTH);
        n.set_head("Packing hello (12 files)".into());
        n.show(0, 0);
        n.show(0, 0);
        // Never drawn, nothing to clear.
        let mut q = meter(LIVE_WIDTH);
        q.finish();
        assert_eq!(
            String::from_utf8(m.out).unwrap(),
            "\r\x1b[KUploading hello_1.0_all.…: 42%"
        );
        assert_eq!(
            String::from_utf8(n.out).unwrap(),
            "\r\x1b[KPacking hello (12 files)"
        );
        assert!(q.out.is_empty());
    }
}
