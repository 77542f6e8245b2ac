use super::*;
use refreshd_state::{NewChange, NewTask, State};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A scripted handler: records every call as "kind:do"/"kind:undo" and answers from a script.
struct Script {
    kind: &'static str,
    calls: Arc<Mutex<Vec<String>>>,
    on_do: Box<dyn Fn(usize) -> Outcome + Send + Sync>,
    on_undo: Box<dyn Fn(usize) -> Outcome + Send + Sync>,
    n_do: AtomicUsize,
    n_undo: AtomicUsize,
}

impl Handler for Script {
    fn run(&self, ctx: &TaskCtx, phase: Phase) -> Outcome {
        let (n, f, tag) = match phase {
            Phase::Do => (&self.n_do, &self.on_do, "do"),
            Phase::Undo => (&self.n_undo, &self.on_undo, "undo"),
        };
        let i = n.fetch_add(1, Ordering::SeqCst);
        self.calls
            .lock()
            .unwrap()
            .push(format!("{}:{tag}", self.kind));
        ctx.log(format!("{tag} #{i}"));
        f(i)
    }
}

struct Harness {
    engine: Engine,
    calls: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    join: tokio::task::JoinHandle<()>,
}

type Behaviour = (
    &'static str,
    Box<dyn Fn(usize) -> Outcome + Send + Sync>,
    Box<dyn Fn(usize) -> Outcome + Send + Sync>,
);

fn ok() -> Box<dyn Fn(usize) -> Outcome + Send + Sync> {
    Box::new(|_| Outcome::Done)
}

fn start(db: Db, behaviours: Vec<Behaviour>) -> Harness {
    let calls = Arc::new(Mutex::new(vec![]));
    let mut handlers: HashMap<String, Arc<dyn Handler>> = HashMap::new();
    for (kind, on_do, on_undo) in behaviours {
        handlers.insert(
            kind.to_string(),
            Arc::new(Script {
                kind,
                calls: calls.clone(),
                on_do,
                on_undo,
                n_do: AtomicUsize::new(0),
                n_undo: AtomicUsize::new(0),
            }),
        );
    }
    let engine = Engine::new(db, handlers, PrunePolicy::default());
    let stop = CancellationToken::new();
    let join = tokio::spawn({
        let engine = engine.clone();
        let stop = stop.clone();
        async move { engine.run(stop, Duration::from_secs(5)).await }
    });
    Harness {
        engine,
        calls,
        stop,
        join,
    }
}

fn chain(kinds: &[&str]) -> NewChange {
    NewChange {
        kind: "test".into(),
        summary: "test change".into(),
        snap: Some("s".into()),
        data: json!({}),
        tasks: kinds
            .iter()
            .enumerate()
            .map(|(i, k)| NewTask {
                kind: k.to_string(),
                summary: k.to_string(),
                data: json!({}),
                waits_for: if i == 0 { vec![] } else { vec![i - 1] },
            })
            .collect(),
    }
}

async fn create(h: &Harness, c: NewChange) -> ChangeId {
    let id = h
        .engine
        .db()
        .call(move |s| s.create_change(&c, None))
        .await
        .unwrap()
        .id();
    h.engine.ensure();
    id
}

/// Waits, event-driven, until the change is ready, and returns its task statuses.
async fn until_ready(h: &Harness, id: ChangeId) -> Vec<TaskRow> {
    let mut rx = h.engine.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let c = h
                .engine
                .db()
                .call(move |s| s.change(id))
                .await
                .unwrap()
                .unwrap();
            if c.ready_time.is_some() {
                return h.engine.db().call(move |s| s.tasks(id)).await.unwrap();
            }
            let _ = rx.recv().await;
        }
    })
    .await
    .expect("change did not become ready")
}

async fn until_status(h: &Harness, task: TaskId, want: Status) -> TaskRow {
    let mut rx = h.engine.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let t = h
                .engine
                .db()
                .call(move |s| s.task(task))
                .await
                .unwrap()
                .unwrap();
            if t.status == want {
                return t;
            }
            let _ = rx.recv().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("task {task} never reached {want}"))
}

fn statuses(tasks: &[TaskRow]) -> Vec<Status> {
    tasks.iter().map(|t| t.status).collect()
}

async fn stop(h: Harness) {
    h.stop.cancel();
    h.join.await.unwrap();
}

fn db() -> Db {
    Db::new(State::open_in_memory().unwrap())
}

#[tokio::test]
async fn runs_a_chain_in_order() {
    let h = start(
        db(),
        vec![("a", ok(), ok()), ("b", ok(), ok()), ("c", ok(), ok())],
    );
    let id = create(&h, chain(&["a", "b", "c"])).await;
    let tasks = until_ready(&h, id).await;
    assert_eq!(statuses(&tasks), vec![Status::Done; 3]);
    assert_eq!(*h.calls.lock().unwrap(), vec!["a:do", "b:do", "c:do"]);
    assert!(tasks[0].log[0].ends_with("do #0"), "{:?}", tasks[0].log);
    stop(h).await;
}

#[tokio::test]
async fn error_undoes_done_tasks_in_reverse_and_holds_the_rest() {
    let h = start(
        db(),
        vec![
            ("a", ok(), ok()),
            ("b", ok(), ok()),
            ("c", Box::new(|_| Outcome::Failed("boom".into())), ok()),
            ("d", ok(), ok()),
        ],
    );
    let id = create(&h, chain(&["a", "b", "c", "d"])).await;
    let tasks = until_ready(&h, id).await;
    assert_eq!(
        statuses(&tasks),
        vec![Status::Undone, Status::Undone, Status::Error, Status::Hold]
    );
    assert_eq!(
        *h.calls.lock().unwrap(),
        vec!["a:do", "b:do", "c:do", "b:undo", "a:undo"]
    );
    assert!(tasks[2].log.iter().any(|l| l.contains("ERROR boom")));
    assert_eq!(change_status(&statuses(&tasks)), Status::Error);
    stop(h).await;
}

#[tokio::test]
async fn failed_undo_is_recorded_and_the_rest_still_undone() {
    let h = start(
        db(),
        vec![
            ("a", ok(), ok()),
            (
                "b",
                ok(),
                Box::new(|_| Outcome::Failed("cannot undo b".into())),
            ),
            ("c", Box::new(|_| Outcome::Failed("boom".into())), ok()),
        ],
    );
    let id = create(&h, chain(&["a", "b", "c"])).await;
    let tasks = until_ready(&h, id).await;
    assert_eq!(
        statuses(&tasks),
        vec![Status::Undone, Status::Error, Status::Error]
    );
    assert!(tasks[1]
        .log
        .iter()
        .any(|l| l.contains("ERROR cannot undo b")));
    stop(h).await;
}

#[tokio::test]
async fn transient_failures_retry_with_visible_reason() {
    let h = start(
        db(),
        vec![(
            "flaky",
            Box::new(|i| {
                if i < 2 {
                    Outcome::Retry {
                        reason: format!("busy #{i}"),
                        after: Some(Duration::from_millis(20)),
                    }
                } else {
                    Outcome::Done
                }
            }),
            ok(),
        )],
    );
    let id = create(&h, chain(&["flaky"])).await;
    let tid = h.engine.db().call(move |s| s.tasks(id)).await.unwrap()[0].id;
    // While between attempts the reason and next attempt are on record.
    let mut rx = h.engine.subscribe();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let t = h
                .engine
                .db()
                .call(move |s| s.task(tid))
                .await
                .unwrap()
                .unwrap();
            if t.retry_reason.is_some() {
                return t;
            }
            let _ = rx.recv().await;
        }
    })
    .await
    .unwrap();
    assert!(seen.retry_reason.unwrap().starts_with("busy #"));
    assert!(seen.wait_until.is_some());
    let tasks = until_ready(&h, id).await;
    assert_eq!(statuses(&tasks), vec![Status::Done]);
    assert_eq!(tasks[0].retry_count, 2);
    stop(h).await;
}

#[tokio::test]
async fn parks_until_the_event_without_polling() {
    let gate = Arc::new(AtomicBool::new(false));
    let g = gate.clone();
    let h = start(
        db(),
        vec![(
            "wait",
            Box::new(move |_| {
                if g.load(Ordering::SeqCst) {
                    Outcome::Done
                } else {
                    Outcome::Wait {
                        event: Some("snap-idle:s".into()),
                        until: None,
                        reason: "waiting for the app to exit".into(),
                    }
                }
            }),
            ok(),
        )],
    );
    let id = create(&h, chain(&["wait"])).await;
    let tid = h.engine.db().call(move |s| s.tasks(id)).await.unwrap()[0].id;
    let t = until_status(&h, tid, Status::Wait).await;
    assert_eq!(
        t.wait_reason.as_deref(),
        Some("waiting for the app to exit")
    );
    // Parked: the handler is not called again however long we wait (no polling).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.calls.lock().unwrap().len(), 1);
    // An unrelated event wakes nothing.
    assert_eq!(h.engine.notify_event("snap-idle:other").await.unwrap(), 0);
    gate.store(true, Ordering::SeqCst);
    assert_eq!(h.engine.notify_event("snap-idle:s").await.unwrap(), 1);
    let tasks = until_ready(&h, id).await;
    assert_eq!(statuses(&tasks), vec![Status::Done]);
    assert_eq!(h.calls.lock().unwrap().len(), 2);
    stop(h).await;
}

#[tokio::test]
async fn timed_wait_wakes_by_itself() {
    let h = start(
        db(),
        vec![(
            "later",
            Box::new(|i| {
                if i == 0 {
                    Outcome::Wait {
                        event: None,
                        until: Some(now_ms() + 50),
                        reason: "not yet".into(),
                    }
                } else {
                    Outcome::Done
                }
            }),
            ok(),
        )],
    );
    let id = create(&h, chain(&["later"])).await;
    assert_eq!(statuses(&until_ready(&h, id).await), vec![Status::Done]);
    stop(h).await;
}

#[tokio::test]
async fn abort_undoes_a_waiting_change() {
    let h = start(
        db(),
        vec![
            ("a", ok(), ok()),
            (
                "wait",
                Box::new(|_| Outcome::Wait {
                    event: Some("never".into()),
                    until: None,
                    reason: "forever".into(),
                }),
                ok(),
            ),
            ("c", ok(), ok()),
        ],
    );
    let id = create(&h, chain(&["a", "wait", "c"])).await;
    let tid = h.engine.db().call(move |s| s.tasks(id)).await.unwrap()[1].id;
    until_status(&h, tid, Status::Wait).await;
    h.engine.abort(id).await.unwrap();
    let tasks = until_ready(&h, id).await;
    assert_eq!(
        statuses(&tasks),
        vec![Status::Undone, Status::Undone, Status::Hold]
    );
    assert_eq!(
        *h.calls.lock().unwrap(),
        vec!["a:do", "wait:do", "wait:undo", "a:undo"]
    );
    assert!(matches!(
        h.engine.abort(id).await,
        Err(AbortError::Ready(_))
    ));
    assert!(matches!(
        h.engine.abort(9999).await,
        Err(AbortError::NotFound(9999))
    ));
    stop(h).await;
}

#[tokio::test]
async fn resumes_interrupted_tasks_from_the_database() {
    // As if the daemon died with "b" Doing and a Wait task parked: both run again.
    let db = db();
    let id = db
        .call(|s| s.create_change(&chain(&["a", "b", "c"]), None))
        .await
        .unwrap()
        .id();
    db.call(move |s| {
        let mut tasks = s.tasks(id)?;
        tasks[0].status = Status::Done;
        tasks[1].status = Status::Doing;
        s.save_tasks(&tasks)
    })
    .await
    .unwrap();
    let h = start(
        db,
        vec![("a", ok(), ok()), ("b", ok(), ok()), ("c", ok(), ok())],
    );
    let tasks = until_ready(&h, id).await;
    assert_eq!(statuses(&tasks), vec![Status::Done; 3]);
    assert_eq!(*h.calls.lock().unwrap(), vec!["b:do", "c:do"]);
    stop(h).await;
}

#[tokio::test]
async fn unknown_task_kind_fails_the_change_cleanly() {
    let h = start(db(), vec![("a", ok(), ok())]);
    let id = create(&h, chain(&["a", "from-the-future"])).await;
    let tasks = until_ready(&h, id).await;
    assert_eq!(statuses(&tasks), vec![Status::Undone, Status::Error]);
    assert!(tasks[1].log.iter().any(|l| l.contains("unknown task kind")));
    stop(h).await;
}

#[test]
fn backoff_grows_and_is_capped() {
    assert_eq!(backoff(1), Duration::from_millis(100));
    assert_eq!(backoff(2), Duration::from_millis(200));
    assert_eq!(backoff(4), Duration::from_millis(800));
    assert_eq!(backoff(100), MAX_BACKOFF);
}
