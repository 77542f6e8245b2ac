//! Showing a change as it progresses (`watch`, and `install`/`remove` while they wait).

use std::collections::HashMap;
use std::io::{self, Write};

use crate::types::{Change, Status, Task};

/// How to show the states of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A line per task status change (and per new retry or wait reason): for logs and pipes.
    Lines,
    /// One line redrawn in place: for a terminal.
    Live,
    /// Every state as a line of JSON (NDJSON), exactly as the API sends it.
    Json,
}

/// Longest live line, so that it does not wrap on a usual terminal (its width is not asked).
const LIVE_WIDTH: usize = 79;

/// What was last shown of a task, to print only what changed.
#[derive(Default, PartialEq, Eq)]
struct Seen {
    status: Option<Status>,
    retry: Option<u32>,
    wait: Option<String>,
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
                serde_json::to_writer(&mut self.out, change)?;
                self.out.write_all(b"\n")?;
            }
            Mode::Lines => self.lines(change)?,
            Mode::Live => {
                let line = live_line(change);
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
        }
        Ok(())
    }
}

/// `[2/5] Mount snap "hello" (x1): copying 40%`
fn live_line(change: &Change) -> String {
    let total = change.tasks.len();
    let finished = change.tasks.iter().filter(|t| t.status.is_ready()).count();
    let line = match current_task(change) {
        Some(task) => format!("[{finished}/{total}] {}", describe(task)),
        None => format!("{} {}", change.status, change.summary),
    };
    truncate(&line, LIVE_WIDTH)
}

/// The task most worth showing: one running, else one waiting, else the next to run.
fn current_task(change: &Change) -> Option<&Task> {
    let find = |pred: &dyn Fn(Status) -> bool| change.tasks.iter().find(|t| pred(t.status));
    find(&|s| matches!(s, Status::Doing | Status::Undoing))
        .or_else(|| find(&|s| s == Status::Wait))
        .or_else(|| find(&|s| !s.is_ready()))
}

fn describe(task: &Task) -> String {
    let mut s = task.summary.clone();
    if let Some(wait) = &task.wait {
        s.push_str(": ");
        s.push_str(&wait.reason);
    } else if let Some(retry) = &task.retry {
        s.push_str(&format!(": {} (retry {})", retry.reason, retry.count));
    } else if task.progress.total > 0 && task.progress.done < task.progress.total {
        let pct = task.progress.done.saturating_mul(100) / task.progress.total;
        s.push_str(": ");
        if !task.progress.label.is_empty() {
            s.push_str(&task.progress.label);
            s.push(' ');
        }
        s.push_str(&format!("{pct}%"));
    }
    if matches!(task.status, Status::Undoing | Status::Undo) {
        s = format!("undoing {s}");
    }
    s
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
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
            "\r\x1b[K[1/2] Copy snap data: copying 40%\r\x1b[K"
        );
        let long = "x".repeat(200);
        assert_eq!(truncate(&long, LIVE_WIDTH).chars().count(), LIVE_WIDTH);
    }
}
