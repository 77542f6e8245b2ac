//! The change/task engine.
//!
//! A change is a graph of tasks (each waits for the tasks in its `waits_for`). Each task kind has
//! a [`Handler`] with a do and an undo half. The engine:
//! - commits every status change before acting on it, so after a crash it resumes from the
//!   database alone: tasks found Doing/Undoing are run again (handlers are idempotent), tasks
//!   found in Wait re-check what they wait for;
//! - on a task error aborts the change: tasks not yet started are held, finished ones undone in
//!   reverse order, and a failed undo is recorded in the task, never swallowed;
//! - retries transient failures with exponential backoff, recording reason and next attempt;
//! - parks tasks in Wait until an event ([`Engine::notify_event`]) or a time, without polling:
//!   its loop sleeps until a wake-up, a completion or the earliest deadline.

pub mod failpoint;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use refreshd_state::{now_ms, ChangeId, ChangeRow, PrunePolicy, Select, TaskId, TaskRow};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::db::Db;
pub use status::{change_status, Event, Status};

/// How long a task's log may grow; older lines are dropped.
const MAX_LOG_LINES: usize = 30;
/// The longest a retrying task waits between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a task whose outcome could not be recorded waits before it runs again.
const RECORD_RETRY: Duration = Duration::from_secs(5);

/// Which half of a handler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Do,
    Undo,
}

/// Who learns what the engine finished: the daemon's metrics (docs/metrics.md). They sit above
/// the engine and are handed to it at start-up ([`Engine::observed`]). Each call comes after
/// the commit it reports, with what was committed.
pub trait Observer: Send + Sync {
    /// `change` became ready with `status`; `tasks` are its tasks.
    fn change_ready(&self, change: &ChangeRow, status: Status, tasks: &[TaskRow]);
    /// Whether a committed step of task `t` in `phase` is of interest: then the engine reads
    /// the tasks of its change and calls [`Observer::task_step`].
    fn wants(&self, t: &TaskRow, phase: Phase) -> bool;
    fn task_step(&self, change: &ChangeRow, t: &TaskRow, phase: Phase, tasks: &[TaskRow]);
}

/// No one listening (tests, benchmarks).
struct Unobserved;

impl Observer for Unobserved {
    fn change_ready(&self, _: &ChangeRow, _: Status, _: &[TaskRow]) {}
    fn wants(&self, _: &TaskRow, _: Phase) -> bool {
        false
    }
    fn task_step(&self, _: &ChangeRow, _: &TaskRow, _: Phase, _: &[TaskRow]) {}
}

/// What a handler reports back.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The work is done (or, for undo, undone).
    Done,
    /// A transient failure; run again after `after` (default: exponential backoff).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Not yet possible: park until `event` is notified or the time `until` (unix ms) passes.
    /// The handler runs again then and must re-check.
    Wait {
        event: Option<String>,
        until: Option<i64>,
        reason: String,
    },
    /// A permanent failure: the change aborts.
    Failed(String),
}

impl Outcome {
    pub fn failed(e: impl std::fmt::Display) -> Outcome {
        Outcome::Failed(e.to_string())
    }
}

/// The do and undo halves of one task kind. Both run on a thread of their own and must be
/// idempotent: either may be interrupted at any point and run again from the start.
pub trait Handler: Send + Sync + 'static {
    fn run(&self, ctx: &TaskCtx, phase: Phase) -> Outcome;
}

/// What a running handler sees and may record.
pub struct TaskCtx {
    pub task: TaskRow,
    pub change: ChangeRow,
    db: Db,
    changed: broadcast::Sender<ChangeId>,
    cancel: CancellationToken,
}

impl TaskCtx {
    /// Appends a line to the task's log (shown by `refreshctl tasks`) and to the daemon's log.
    pub fn log(&self, msg: impl AsRef<str>) {
        // What users control (file names in their trees, command lines, hook output) is in
        // these lines: escaped here, so no sink (the journal included) gets raw control bytes.
        let msg = refreshd_snap::text::printable(msg.as_ref());
        info!(
            snap = self.change.snap.as_deref().unwrap_or(""),
            change = self.change.id,
            task = self.task.id,
            kind = %self.task.kind,
            "{msg}"
        );
        let line = format!(
            "{} {msg}",
            jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        self.update(|t| push_log(t, line));
    }

    /// Records progress, e.g. bytes copied of a total.
    pub fn progress(&self, label: &str, done: u64, total: u64) {
        let label = label.to_owned();
        self.update(move |t| {
            t.progress_label = label;
            t.progress_done = done;
            t.progress_total = total;
        });
    }

    /// Replaces the task's data, so a later run (after a crash) sees what this one decided.
    pub fn set_data(&self, data: serde_json::Value) {
        self.update(move |t| t.data = data);
    }

    /// The task's data as its type, as it is in the database now (an earlier step of this same
    /// run may have recorded part of it); the default when there is none or it is not a `T`.
    pub fn data<T: serde::de::DeserializeOwned + Default>(&self) -> T {
        let data = self
            .db
            .with(|s| s.task(self.task.id))
            .ok()
            .flatten()
            .map_or_else(|| self.task.data.clone(), |row| row.data);
        serde_json::from_value(data).unwrap_or_default()
    }

    /// Records `data` as the task's data ([`TaskCtx::set_data`], typed).
    pub fn record<T: serde::Serialize>(&self, data: &T) {
        self.set_data(serde_json::to_value(data).expect("task data serializes"));
    }

    /// Records `data` and commits it before returning ([`TaskCtx::try_set_data`], typed).
    pub fn try_record<T: serde::Serialize>(&self, data: &T) -> refreshd_state::Result<()> {
        self.try_set_data(serde_json::to_value(data).expect("task data serializes"))
    }

    /// Replaces the task's data and commits it before returning: for a record that must not be
    /// lost (what a re-run after a crash relies on).
    pub fn try_set_data(&self, data: serde_json::Value) -> refreshd_state::Result<()> {
        let id = self.task.id;
        self.db.with(|s| -> refreshd_state::Result<()> {
            if let Some(mut t) = s.task(id)? {
                t.data = data;
                s.save_task(&t)?;
            }
            Ok(())
        })?;
        let _ = self.changed.send(self.change.id);
        Ok(())
    }

    /// Replaces the change's data (shared by its tasks), for what later tasks must know.
    pub fn set_change_data(&self, data: serde_json::Value) -> refreshd_state::Result<()> {
        let id = self.change.id;
        self.db.with(|s| s.set_change_data(id, &data))
    }

    /// Runs `f` on the state store (handlers run on blocking threads, so this may block).
    pub fn db_with<T>(&self, f: impl FnOnce(&mut refreshd_state::State) -> T) -> T {
        self.db.with(f)
    }

    /// True once the daemon is shutting down; long handlers return early (with Retry).
    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn update(&self, f: impl FnOnce(&mut TaskRow)) {
        let id = self.task.id;
        let res = self.db.with(|s| -> refreshd_state::Result<()> {
            if let Some(mut t) = s.task(id)? {
                f(&mut t);
                s.save_task(&t)?;
            }
            Ok(())
        });
        if let Err(e) = res {
            warn!(task = id, "cannot record task progress: {e}");
        }
        let _ = self.changed.send(self.change.id);
    }
}

/// Runs a handler on a thread of its own, so that it never waits for a thread of a pool that
/// anything else (the API's requests) could have taken. The thread is in the engine's runtime
/// (a handler may start background work there, as a blocking thread of it could). A thread
/// that cannot be made is a transient failure; a handler that panics fails its task.
async fn on_own_thread(kind: &str, f: impl FnOnce() -> Outcome + Send + 'static) -> Outcome {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name(format!("task {kind}"))
        .spawn(move || {
            let _rt = rt.enter();
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(out);
        });
    if let Err(e) = spawned {
        return Outcome::Retry {
            reason: format!("cannot start a thread for the task: {e}"),
            after: None,
        };
    }
    match rx.await {
        Ok(Ok(out)) => out,
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Outcome::Failed(format!("task handler panicked: {msg}"))
        }
        Err(_) => Outcome::Failed("task handler panicked".to_owned()),
    }
}

fn push_log(t: &mut TaskRow, line: String) {
    t.log.push(line);
    if t.log.len() > MAX_LOG_LINES {
        let extra = t.log.len() - MAX_LOG_LINES;
        t.log.drain(..extra);
    }
}

struct Inner {
    db: Db,
    handlers: HashMap<String, Arc<dyn Handler>>,
    prune: PrunePolicy,
    wake: Notify,
    running: Mutex<HashSet<TaskId>>,
    changed: broadcast::Sender<ChangeId>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Event generations: a counter bumped by every notify, and the value at each event's
    /// last firing. A handler that parks on an event which fired while it ran (after it looked,
    /// before its Wait was committed) is woken at once: no lost wake-ups.
    events: Mutex<(u64, HashMap<String, u64>)>,
    observer: Arc<dyn Observer>,
    /// The monotonic and the wall clock at the last pass: a wall clock set back between passes
    /// moves the stored deadlines back with it (see [`Engine::clock_set_back`]).
    clock: Mutex<(std::time::Instant, i64)>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug, thiserror::Error)]
pub enum AbortError {
    #[error("no change {0}")]
    NotFound(ChangeId),
    #[error("change {0} is already finished; nothing to abort")]
    Ready(ChangeId),
    #[error(transparent)]
    State(#[from] refreshd_state::Error),
}

impl Engine {
    pub fn new(db: Db, handlers: HashMap<String, Arc<dyn Handler>>, prune: PrunePolicy) -> Engine {
        Engine::observed(db, handlers, prune, Arc::new(Unobserved))
    }

    /// An engine that tells `observer` what it finished.
    pub fn observed(
        db: Db,
        handlers: HashMap<String, Arc<dyn Handler>>,
        prune: PrunePolicy,
        observer: Arc<dyn Observer>,
    ) -> Engine {
        let (changed, _) = broadcast::channel(256);
        Engine {
            inner: Arc::new(Inner {
                db,
                handlers,
                prune,
                wake: Notify::new(),
                running: Mutex::new(HashSet::new()),
                changed,
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
                events: Mutex::new((0, HashMap::new())),
                observer,
                clock: Mutex::new((std::time::Instant::now(), now_ms())),
            }),
        }
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Ids of changes whose state changed, for watchers. A lagging receiver should re-read.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeId> {
        self.inner.changed.subscribe()
    }

    /// Asks the loop to look for work (after a change was created, say).
    pub fn ensure(&self) {
        self.inner.wake.notify_one();
    }

    /// Wakes every task parked in Wait on `event`. Events are hints: the woken handler
    /// re-checks its condition, so a spurious or repeated event is harmless.
    pub async fn notify_event(&self, event: &str) -> refreshd_state::Result<usize> {
        {
            let mut g = self.inner.events.lock().unwrap();
            g.0 += 1;
            let now = g.0;
            g.1.insert(event.to_owned(), now);
        }
        let ev = event.to_owned();
        let woken = self
            .inner
            .db
            .call(move |s| {
                let mut tasks = s.tasks_waiting_on(&ev)?;
                for t in &mut tasks {
                    wake(t);
                }
                s.save_tasks(&tasks)?;
                Ok::<_, refreshd_state::Error>(tasks)
            })
            .await?;
        for t in &woken {
            debug!(task = t.id, change = t.change_id, event, "woken");
            let _ = self.inner.changed.send(t.change_id);
        }
        if !woken.is_empty() {
            self.ensure();
        }
        Ok(woken.len())
    }

    /// The distinct events parked tasks wait on that start with `prefix` (one read, no write).
    pub async fn events_waited_on(&self, prefix: &str) -> refreshd_state::Result<Vec<String>> {
        let prefix = prefix.to_owned();
        self.inner
            .db
            .call(move |s| s.events_waited_on(&prefix))
            .await
    }

    /// Requests an abort. Tasks not started are held and finished ones undone by the loop.
    pub async fn abort(&self, id: ChangeId) -> Result<(), AbortError> {
        self.inner
            .db
            .call(move |s| {
                let c = s.change(id)?.ok_or(AbortError::NotFound(id))?;
                if c.ready_time.is_some() {
                    return Err(AbortError::Ready(id));
                }
                s.set_abort_requested(id)?;
                Ok(())
            })
            .await?;
        info!(change = id, "abort requested");
        let _ = self.inner.changed.send(id);
        self.ensure();
        Ok(())
    }

    /// Runs the engine until `shutdown` fires, then lets running handlers reach their end
    /// (they see `cancelled()`), waiting at most `grace` for them.
    pub async fn run(&self, shutdown: CancellationToken, grace: Duration) {
        if let Err(e) = self.resume().await {
            error!("cannot resume unfinished changes: {e}");
        }
        loop {
            let deadline = match self.pass().await {
                Ok(d) => d,
                Err(e) => {
                    // The database failed under us; try again shortly rather than spin.
                    error!("engine pass failed: {e}");
                    Some(self.pass_time() + 1000)
                }
            };
            let sleep = async {
                match deadline {
                    Some(at) => {
                        let ms = (at - self.pass_time()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(ms)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                _ = sleep => {}
            }
        }
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            warn!("handlers still running after {grace:?}; they will run again at next start");
        }
    }

    /// At start-up: tasks parked in Wait re-check their condition, because events may have
    /// passed while the daemon was down; and history that aged while it was down is pruned.
    async fn resume(&self) -> refreshd_state::Result<()> {
        let policy = self.inner.prune;
        self.inner
            .db
            .call(move |s| {
                let now = now_ms();
                s.prune(policy, now)?;
                let mut woken = vec![];
                for c in s.changes(Select::InProgress, None)? {
                    for mut t in s.tasks(c.id)? {
                        if t.status == Status::Wait {
                            wake(&mut t);
                            woken.push(t);
                        } else if t.wait_until.is_some_and(|at| {
                            at > now.saturating_add(MAX_BACKOFF.as_millis() as i64)
                        }) {
                            // No retry is that far off: the clock was set back while the
                            // daemon was down. Run it now rather than in a year.
                            t.wait_until = Some(now);
                            woken.push(t);
                        }
                    }
                }
                s.save_tasks(&woken)
            })
            .await
    }

    /// One scheduling pass over every unfinished change. Returns the earliest time at which a
    /// task becomes runnable by the clock (retry backoff, timed wait).
    async fn pass(&self) -> refreshd_state::Result<Option<i64>> {
        let inner = self.inner.clone();
        let back = self.clock_set_back();
        // Planning reads and writes under the database lock, so it cannot interleave with a
        // completion or an event; `running` is read inside for the same reason.
        let (plans, ready, refreshes) = self
            .inner
            .db
            .call(move |s| {
                if back > 0 {
                    shift_deadlines(s, back)?;
                }
                let running = inner.running.lock().unwrap().clone();
                let mut plans = vec![];
                let mut ready = vec![];
                let mut refreshes = vec![];
                for change in s.changes(Select::InProgress, None)? {
                    let plan = plan_change(s, &change, &running, now_ms())?;
                    if plan.ready {
                        s.set_change_ready(change.id, Some(now_ms()))?;
                        ready.push((change.id, plan.status));
                        // Read errors only cost the observer this change.
                        let tasks = s.tasks(change.id).unwrap_or_default();
                        refreshes.push((change.clone(), plan.status, tasks));
                    }
                    plans.push((change, plan));
                }
                if !ready.is_empty() {
                    s.prune(inner.prune, now_ms())?;
                }
                Ok::<_, refreshd_state::Error>((plans, ready, refreshes))
            })
            .await?;
        for (change, status, tasks) in refreshes {
            self.inner.observer.change_ready(&change, status, &tasks);
        }
        let mut deadline: Option<i64> = None;
        for (change, plan) in plans {
            if plan.changed {
                let _ = self.inner.changed.send(change.id);
            }
            for (t, phase) in plan.start {
                self.spawn(t, change.clone(), phase);
            }
            if let Some(d) = plan.deadline {
                deadline = min_opt(deadline, d);
            }
        }
        for (id, status) in ready {
            info!(change = id, %status, "change ready");
            let _ = self.inner.changed.send(id);
        }
        Ok(deadline)
    }

    fn spawn(&self, task: TaskRow, change: ChangeRow, phase: Phase) {
        let Some(handler) = self.inner.handlers.get(&task.kind).cloned() else {
            // A kind this build does not know (state written by a newer refreshd): fail it
            // rather than guess.
            let engine = self.clone();
            let id = task.id;
            let kind = task.kind.clone();
            self.inner.running.lock().unwrap().insert(id);
            self.inner.tracker.spawn(async move {
                engine
                    .complete(
                        id,
                        phase,
                        Outcome::Failed(format!("unknown task kind {kind:?}")),
                    )
                    .await;
            });
            return;
        };
        let id = task.id;
        self.inner.running.lock().unwrap().insert(id);
        let started_gen = self.inner.events.lock().unwrap().0;
        let engine = self.clone();
        let ctx = TaskCtx {
            task,
            change,
            db: self.inner.db.clone(),
            changed: self.inner.changed.clone(),
            cancel: self.inner.cancel.clone(),
        };
        self.inner.tracker.spawn(async move {
            let kind = ctx.task.kind.clone();
            let when = if phase == Phase::Do { "do" } else { "undo" };
            let name = kind.clone();
            let outcome = on_own_thread(&name, move || {
                failpoint::hit(&format!("before-{when}:{kind}"));
                let out = if failpoint::fails(&format!("fail-{when}:{kind}")) {
                    Outcome::Failed(format!("failpoint fail-{when}:{kind}"))
                } else if phase == Phase::Do && failpoint::fails(&format!("park-do:{kind}")) {
                    Outcome::Wait {
                        event: Some("failpoint".into()),
                        until: None,
                        reason: format!("parked by failpoint park-do:{kind}"),
                    }
                } else {
                    handler.run(&ctx, phase)
                };
                failpoint::hit(&format!("after-{when}:{kind}"));
                out
            })
            .await;
            let outcome = engine.fired_since(outcome, started_gen);
            engine.complete(id, phase, outcome).await;
        });
    }

    /// A Wait on an event that fired while the handler ran becomes an immediate retry.
    fn fired_since(&self, outcome: Outcome, started_gen: u64) -> Outcome {
        if let Outcome::Wait {
            event: Some(ev), ..
        } = &outcome
        {
            let g = self.inner.events.lock().unwrap();
            if g.1.get(ev).is_some_and(|&at| at > started_gen) {
                debug!(event = %ev, "event fired while the task checked; running it again");
                return Outcome::Retry {
                    reason: format!("{ev} happened while checking"),
                    after: Some(Duration::ZERO),
                };
            }
        }
        outcome
    }

    /// Commits a handler's outcome.
    async fn complete(&self, id: TaskId, phase: Phase, outcome: Outcome) {
        let cancelled = self.inner.cancel.is_cancelled();
        let res = self
            .inner
            .db
            .call(move |s| -> refreshd_state::Result<Option<TaskRow>> {
                let Some(mut t) = s.task(id)? else {
                    return Ok(None);
                };
                apply_outcome(&mut t, phase, outcome, cancelled);
                s.save_task(&t)?;
                Ok(Some(t))
            })
            .await;
        if let Err(e) = &res {
            // The state cannot be written (disk full, I/O error): the task is still Doing on
            // disk, and the next pass would run it again at once, over and over. It stays
            // marked running for a while instead; whatever it did is redone (handlers are
            // idempotent) once its outcome can be recorded.
            error!(
                task = id,
                "cannot record task outcome: {e}; trying the task again in {}s",
                RECORD_RETRY.as_secs()
            );
            tokio::select! {
                _ = tokio::time::sleep(RECORD_RETRY) => {}
                _ = self.inner.cancel.cancelled() => {}
            }
        }
        self.inner.running.lock().unwrap().remove(&id);
        if let Ok(Some(t)) = &res {
            self.observe(t, phase).await;
        }
        if let Ok(Some(t)) = res {
            debug!(task = id, change = t.change_id, status = %t.status, "task step done");
            let _ = self.inner.changed.send(t.change_id);
        }
        self.ensure();
    }
}

impl Engine {
    /// Tells the observer of a committed task step it wants (after the commit: a step that
    /// was not recorded was not observed either).
    async fn observe(&self, t: &TaskRow, phase: Phase) {
        if !self.inner.observer.wants(t, phase) {
            return;
        }
        let id = t.change_id;
        // Read errors only cost the observation.
        let read = self
            .inner
            .db
            .call(move |s| Ok::<_, refreshd_state::Error>((s.change(id)?, s.tasks(id)?)))
            .await;
        if let Ok((Some(change), tasks)) = read {
            self.inner.observer.task_step(&change, t, phase, &tasks);
        }
    }
}

impl Engine {
    /// The wall time as the last pass saw it, advanced by the monotonic clock: a sleep until a
    /// deadline is measured with it, so a clock set back just after a pass cannot turn a short
    /// sleep into a year (the next pass sees the jump and moves the deadlines).
    fn pass_time(&self) -> i64 {
        let (mono, wall) = *self.inner.clock.lock().unwrap();
        wall.saturating_add(mono.elapsed().as_millis() as i64)
    }

    /// How far (ms) the wall clock was set back since the last pass, beyond a second of
    /// slack; 0 if it was not. Deadlines are stored in wall time (they survive a restart), so
    /// without this a clock set back by a year would hold every retry and timed wait for a
    /// year. A clock set forward needs nothing: deadlines fall due early, and each is only a
    /// "look again".
    fn clock_set_back(&self) -> i64 {
        let (mono, wall) = (std::time::Instant::now(), now_ms());
        let mut last = self.inner.clock.lock().unwrap();
        let elapsed = mono.duration_since(last.0).as_millis() as i64;
        let back = last.1.saturating_add(elapsed).saturating_sub(wall);
        *last = (mono, wall);
        if back > 1000 {
            warn!("the wall clock was set back by {back} ms; moving task deadlines back with it");
            back
        } else {
            0
        }
    }
}

/// Moves every unfinished task's deadline (retry, timed wait) `back` ms earlier, so that it
/// keeps the distance from now it had before the clock was set back.
fn shift_deadlines(s: &mut refreshd_state::State, back: i64) -> refreshd_state::Result<()> {
    let mut moved = vec![];
    for c in s.changes(Select::InProgress, None)? {
        for mut t in s.tasks(c.id)? {
            if let Some(at) = t.wait_until {
                t.wait_until = Some(at.saturating_sub(back));
                moved.push(t);
            }
        }
    }
    s.save_tasks(&moved)
}

/// What one pass decided for one change.
struct Plan {
    start: Vec<(TaskRow, Phase)>,
    deadline: Option<i64>,
    changed: bool,
    ready: bool,
    status: Status,
}

/// Decides, and commits, the next steps of one change: abort transitions, expired timed waits,
/// and which tasks start now (their Doing/Undoing status committed before they run).
fn plan_change(
    s: &mut refreshd_state::State,
    change: &ChangeRow,
    running: &HashSet<TaskId>,
    now: i64,
) -> refreshd_state::Result<Plan> {
    let mut tasks = s.tasks(change.id)?;
    let mut deadline = None;
    let mut dirty: Vec<TaskId> = vec![];

    // Abort: by request, or because a task failed.
    let aborting = change.abort_requested || tasks.iter().any(|t| t.status == Status::Error);
    if aborting {
        for t in tasks.iter_mut().filter(|t| status::can_abort(t.status)) {
            let to = status::next(t.status, Event::Abort).expect("can_abort");
            if to == Status::Hold {
                t.ready_time = Some(now);
            }
            t.status = to;
            t.wait_event = None;
            t.wait_until = None;
            t.wait_reason = None;
            dirty.push(t.id);
        }
    }

    // Timed waits that have expired.
    for t in tasks.iter_mut().filter(|t| t.status == Status::Wait) {
        match t.wait_until {
            Some(at) if at <= now => {
                wake(t);
                dirty.push(t.id);
            }
            Some(at) => deadline = min_opt(deadline, at),
            None => {}
        }
    }

    let by_id: HashMap<TaskId, Status> = tasks.iter().map(|t| (t.id, t.status)).collect();
    let mut start: Vec<(usize, Phase)> = vec![];
    for (i, t) in tasks.iter().enumerate() {
        if running.contains(&t.id) {
            continue;
        }
        let phase = match t.status {
            // Interrupted by a crash or a shutdown: run again.
            Status::Doing => Some(Phase::Do),
            Status::Undoing => Some(Phase::Undo),
            Status::Do if !aborting => {
                let after_deps = t
                    .waits_for
                    .iter()
                    .all(|d| by_id.get(d) == Some(&Status::Done));
                after_deps.then_some(Phase::Do)
            }
            Status::Undo => {
                // Undo in reverse order: only once nothing that came after still stands.
                let blocked = tasks.iter().any(|o| {
                    o.waits_for.contains(&t.id)
                        && (status::is_active(o.status) || o.status == Status::Done)
                });
                (!blocked).then_some(Phase::Undo)
            }
            _ => None,
        };
        match (phase, t.wait_until) {
            (Some(_), Some(at)) if at > now && matches!(t.status, Status::Do | Status::Undo) => {
                deadline = min_opt(deadline, at)
            }
            (Some(p), _) => start.push((i, p)),
            (None, _) => {}
        }
    }
    for &(i, _) in &start {
        let t = &mut tasks[i];
        t.status = status::next(t.status, Event::Start).expect("startable status");
        t.wait_until = None;
        dirty.push(t.id);
    }

    let changed = !dirty.is_empty();
    let to_save: Vec<TaskRow> = tasks
        .iter()
        .filter(|t| dirty.contains(&t.id))
        .cloned()
        .collect();
    // Committed before any handler runs.
    s.save_tasks(&to_save)?;

    let ready = !tasks.iter().any(|t| status::is_active(t.status))
        && !tasks.iter().any(|t| running.contains(&t.id));
    Ok(Plan {
        start: start
            .into_iter()
            .map(|(i, p)| (tasks[i].clone(), p))
            .collect(),
        deadline,
        changed,
        ready,
        status: change_status(&tasks.iter().map(|t| t.status).collect::<Vec<_>>()),
    })
}

fn apply_outcome(t: &mut TaskRow, phase: Phase, outcome: Outcome, cancelled: bool) {
    let now = now_ms();
    let event = match (&outcome, phase) {
        (Outcome::Done, _) => Event::Succeeded,
        (Outcome::Failed(_), _) => Event::Failed,
        (Outcome::Retry { .. }, _) => Event::Retry,
        (Outcome::Wait { .. }, Phase::Do) => Event::Park,
        // An undo cannot park: nothing would ever wake the change's abort otherwise.
        (Outcome::Wait { .. }, Phase::Undo) => Event::Failed,
    };
    let to = match status::next(t.status, event) {
        Ok(s) => s,
        Err(d) => {
            error!(task = t.id, "{d}");
            return;
        }
    };
    t.status = to;
    t.wait_event = None;
    t.wait_reason = None;
    t.wait_until = None;
    match outcome {
        Outcome::Done => {
            t.retry_reason = None;
            t.ready_time = Some(now);
        }
        Outcome::Failed(msg) => {
            error!(task = t.id, change = t.change_id, kind = %t.kind, "task failed: {msg}");
            push_log(
                t,
                format!(
                    "{} ERROR {msg}",
                    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ")
                ),
            );
            t.retry_reason = None;
            t.ready_time = Some(now);
        }
        Outcome::Retry { reason, after } => {
            // A shutdown is no failure: run again at the next start, without backoff.
            if !cancelled {
                t.retry_count += 1;
            }
            let delay = after.unwrap_or_else(|| backoff(t.retry_count));
            warn!(
                task = t.id,
                change = t.change_id,
                "will retry in {delay:?}: {reason}"
            );
            t.retry_reason = Some(reason);
            t.wait_until = Some(now + delay.as_millis() as i64);
        }
        Outcome::Wait {
            event,
            until,
            reason,
        } => {
            if to == Status::Wait {
                t.wait_event = event;
                t.wait_until = until;
                t.wait_reason = Some(reason);
            } else {
                push_log(t, "ERROR an undo handler asked to wait".into());
            }
        }
    }
}

/// 100 ms, 200 ms, 400 ms, ... up to [`MAX_BACKOFF`].
pub fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

fn wake(t: &mut TaskRow) {
    t.status = status::next(t.status, Event::Wake).expect("only Wait tasks are woken");
    t.wait_event = None;
    t.wait_until = None;
    t.wait_reason = None;
}

fn min_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.min(b)))
}

#[cfg(test)]
mod tests;
