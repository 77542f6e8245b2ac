use super::*;
use serde_json::json;

fn install_change(snap: &str) -> NewChange {
    NewChange {
        kind: "install".into(),
        summary: format!("Install {snap:?}"),
        snap: Some(snap.into()),
        data: json!({"snap": snap}),
        tasks: vec![
            NewTask {
                kind: "prepare".into(),
                summary: "prepare".into(),
                data: json!({"n": 1}),
                waits_for: vec![],
            },
            NewTask {
                kind: "link".into(),
                summary: "link".into(),
                data: json!({}),
                waits_for: vec![0],
            },
        ],
    }
}

fn snap_row(name: &str) -> SnapRow {
    SnapRow {
        name: name.into(),
        snap_name: name.into(),
        instance_key: None,
        current: Some("x1".into()),
        channel: None,
        hold: None,
        settings: json!({"refresh-pending-behavior": "block"}),
        installed: 1,
    }
}

/// Every table and index, normalised, so two schemas can be compared.
fn schema_of(conn: &Connection) -> Vec<(String, String)> {
    let mut st = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        .unwrap();
    st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

#[test]
fn migrates_from_every_older_version() {
    let fresh = State::open_in_memory().unwrap();
    let want = schema_of(&fresh.conn);
    assert_eq!(fresh.schema_version().unwrap(), SCHEMA_VERSION);
    for start in 0..SCHEMA_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            State::setup(conn, start).unwrap();
        }
        let st = State::open(&path).unwrap();
        assert_eq!(st.schema_version().unwrap(), SCHEMA_VERSION, "from {start}");
        assert_eq!(
            schema_of(&st.conn),
            want,
            "schema after migrating from {start}"
        );
        assert_eq!(st.integrity_check().unwrap(), "ok");
    }
}

#[test]
fn data_survives_migration_to_latest() {
    // Data written at every released version must still read at the latest. With one version
    // so far this writes at v1 and reopens; each new migration extends the seed below.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut st = State::setup(Connection::open(&path).unwrap(), 1).unwrap();
        st.put_snap(&snap_row("hello")).unwrap();
        st.create_change(&install_change("hello"), None).unwrap();
    }
    let st = State::open(&path).unwrap();
    assert_eq!(st.snap("hello").unwrap().unwrap(), snap_row("hello"));
    assert_eq!(st.changes(Select::All, None).unwrap().len(), 1);
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = State::open(&path).err().expect("must refuse");
    assert!(matches!(err, Error::TooNew { .. }), "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn status_round_trips() {
    for st in Status::ALL {
        assert_eq!(st.as_str().parse::<Status>().unwrap(), st);
    }
    assert!("done".parse::<Status>().is_err());
}

#[test]
fn change_with_ordered_tasks() {
    let mut st = State::open_in_memory().unwrap();
    let id = st.create_change(&install_change("hello"), None).unwrap();
    let Created::New(id) = id else {
        panic!("expected a new change")
    };
    let tasks = st.tasks(id).unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].status, Status::Do);
    assert_eq!(tasks[1].waits_for, vec![tasks[0].id]);
    assert_eq!(tasks[0].data, json!({"n": 1}));

    let mut t = tasks[0].clone();
    t.status = Status::Doing;
    t.log.push("line".into());
    t.progress_done = 5;
    t.progress_total = 10;
    t.wait_event = Some("snap-idle:hello".into());
    t.status = Status::Wait;
    st.save_task(&t).unwrap();
    assert_eq!(st.task(t.id).unwrap().unwrap(), t);
    assert_eq!(st.tasks_waiting_on("snap-idle:hello").unwrap(), vec![t]);
}

/// What a task records for people to read is stored escaped, whatever a handler wrote: a file
/// name or command line with a newline or an escape sequence cannot forge a line of
/// `refreshctl tasks` or drive a terminal.
#[test]
fn task_text_is_stored_escaped() {
    let mut st = State::open_in_memory().unwrap();
    let id = st
        .create_change(&install_change("hello"), None)
        .unwrap()
        .id();
    let mut t = st.tasks(id).unwrap()[0].clone();
    let hostile = "a\u{1b}[2J\r\n2026-01-01T00:00:00Z root: done\u{202e}";
    t.log.push(format!("copied {hostile}"));
    t.retry_reason = Some(hostile.into());
    t.wait_reason = Some(hostile.into());
    t.progress_label = hostile.into();
    st.save_task(&t).unwrap();
    let back = st.task(t.id).unwrap().unwrap();
    let want = "a\\u{1b}[2J\\r\\n2026-01-01T00:00:00Z root: done\\u{202e}";
    assert_eq!(back.log, [format!("copied {want}")]);
    assert_eq!(back.retry_reason.as_deref(), Some(want));
    assert_eq!(back.wait_reason.as_deref(), Some(want));
    assert_eq!(back.progress_label, want);
}

#[test]
fn one_unfinished_change_per_snap() {
    let mut st = State::open_in_memory().unwrap();
    let first = st
        .create_change(&install_change("hello"), None)
        .unwrap()
        .id();
    match st.create_change(&install_change("hello"), None) {
        Err(Error::Conflict { snap, change }) => {
            assert_eq!(snap, "hello");
            assert_eq!(change, first);
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    // Another snap is independent.
    st.create_change(&install_change("other"), None).unwrap();
    // Once ready, the snap is free again.
    st.set_change_ready(first, Some(now_ms())).unwrap();
    st.create_change(&install_change("hello"), None).unwrap();
}

#[test]
fn idempotency_key_returns_the_same_change() {
    let mut st = State::open_in_memory().unwrap();
    let key = IdempotencyKey {
        uid: 0,
        key: "k1",
        request: "install",
    };
    let a = st
        .create_change(&install_change("hello"), Some(key))
        .unwrap();
    let b = st
        .create_change(&install_change("hello"), Some(key))
        .unwrap();
    assert!(matches!(a, Created::New(_)));
    assert_eq!(b, Created::Existing(a.id()));
    assert_eq!(st.changes(Select::All, None).unwrap().len(), 1);
    // Keys are per uid.
    let other_uid = IdempotencyKey { uid: 1000, ..key };
    assert!(matches!(
        st.create_change(&install_change("x"), Some(other_uid)),
        Ok(Created::New(_))
    ));
    // A key reused for another kind of request is refused.
    let reuse = IdempotencyKey {
        request: "remove",
        ..key
    };
    assert!(matches!(
        st.create_change(&install_change("y"), Some(reuse)),
        Err(Error::KeyReused { .. })
    ));
    assert_eq!(
        st.idempotency_key(0, "k1").unwrap(),
        Some(("install".into(), a.id()))
    );
}

#[test]
fn prune_by_age_and_count() {
    let mut st = State::open_in_memory().unwrap();
    let now = now_ms();
    let mut ids = vec![];
    for i in 0..5 {
        let mut c = install_change(&format!("s{i}"));
        c.snap = Some(format!("s{i}"));
        let id = st.create_change(&c, None).unwrap().id();
        ids.push(id);
    }
    let hour = 3600 * 1000;
    st.set_change_ready(ids[0], Some(now - 48 * hour)).unwrap(); // too old
    for (i, id) in ids[1..4].iter().enumerate() {
        st.set_change_ready(*id, Some(now - hour + i as i64))
            .unwrap();
    }
    // ids[4] stays in progress and is never pruned.
    let n = st
        .prune(
            PrunePolicy {
                max_age_ms: 24 * hour,
                max_count: 2,
            },
            now,
        )
        .unwrap();
    assert_eq!(n, 2, "one by age, one by count");
    let left: Vec<_> = st
        .changes(Select::All, None)
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, vec![ids[4], ids[3], ids[2]]);
    // Tasks went with their changes.
    assert!(st.tasks(ids[0]).unwrap().is_empty());
}

#[test]
fn snaps_and_revisions() {
    let mut st = State::open_in_memory().unwrap();
    st.put_snap(&snap_row("hello")).unwrap();
    let rev = RevisionRow {
        snap: "hello".into(),
        revision: "x1".into(),
        version: "1.0".into(),
        summary: Some("hi".into()),
        sha3_384: "ab".into(),
        size: 4096,
        manifest: "name: hello\n".into(),
        added: 5,
    };
    st.put_revision(&rev).unwrap();
    assert_eq!(st.revisions("hello").unwrap(), vec![rev.clone()]);
    st.set_current("hello", None).unwrap();
    assert_eq!(st.snap("hello").unwrap().unwrap().current, None);
    st.delete_snap("hello").unwrap();
    assert!(st.revision("hello", "x1").unwrap().is_none(), "cascade");
}

#[test]
fn old_revisions_are_deleted_but_never_the_current_one() {
    let mut st = State::open_in_memory().unwrap();
    for snap in ["hello", "other"] {
        st.put_snap(&snap_row(snap)).unwrap();
        for (i, r) in ["x1", "x2", "x3"].into_iter().enumerate() {
            st.put_revision(&RevisionRow {
                snap: snap.into(),
                revision: r.into(),
                version: "1.0".into(),
                summary: None,
                sha3_384: "ab".into(),
                size: 1,
                manifest: String::new(),
                added: i as i64,
            })
            .unwrap();
        }
        st.set_current(snap, Some("x3")).unwrap();
    }
    let revs = |st: &State, snap: &str| -> Vec<String> {
        st.revisions(snap)
            .unwrap()
            .into_iter()
            .map(|r| r.revision)
            .collect()
    };
    assert!(st.delete_old_revision("hello", "x1").unwrap());
    assert!(
        !st.delete_old_revision("hello", "x1").unwrap(),
        "already gone"
    );
    assert!(!st.delete_old_revision("hello", "x3").unwrap(), "current");
    assert!(
        !st.delete_old_revision("hello", "x9").unwrap(),
        "never there"
    );
    assert_eq!(revs(&st, "hello"), ["x2", "x3"]);
    assert_eq!(
        revs(&st, "other"),
        ["x1", "x2", "x3"],
        "another snap's rows"
    );
    // Not linked (current NULL): any revision may go.
    st.set_current("hello", None).unwrap();
    assert!(st.delete_old_revision("hello", "x3").unwrap());
    assert_eq!(revs(&st, "hello"), ["x2"]);
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let id = {
        let mut st = State::open(&path).unwrap();
        st.create_change(&install_change("hello"), None)
            .unwrap()
            .id()
    };
    let st = State::open(&path).unwrap();
    assert_eq!(st.change(id).unwrap().unwrap().kind, "install");
    assert_eq!(st.tasks(id).unwrap().len(), 2);
}

#[test]
fn batch_skips_busy_snaps_and_its_key_returns_the_same_changes() {
    let mut st = State::open_in_memory().unwrap();
    let busy = st
        .create_change(&install_change("busy"), None)
        .unwrap()
        .id();
    let key = IdempotencyKey {
        uid: 0,
        key: "k1",
        request: "refresh-many",
    };
    let news = [
        install_change("a"),
        install_change("busy"),
        install_change("b"),
    ];
    let items = st.create_changes(&news, Some(key)).unwrap();
    let [BatchItem::Created(a), BatchItem::Busy(b), BatchItem::Created(c)] = items[..] else {
        panic!("{items:?}")
    };
    assert_eq!(b, busy);
    assert_eq!(st.changes(Select::All, None).unwrap().len(), 3);

    // A retry creates nothing and answers with what the first attempt made.
    let again = st.create_changes(&news, Some(key)).unwrap();
    assert_eq!(again, [BatchItem::Created(a), BatchItem::Created(c)]);
    assert_eq!(st.changes(Select::All, None).unwrap().len(), 3);
    let rows = st.idempotency_batch(0, "k1").unwrap();
    assert_eq!(
        rows,
        [
            ("refresh-many".to_owned(), a, Some("a".to_owned())),
            ("refresh-many".to_owned(), c, Some("b".to_owned()))
        ]
    );
    // The batch's rows are not a single key, and do not match a longer key.
    assert_eq!(st.idempotency_key(0, "k1").unwrap(), None);
    assert!(st.idempotency_batch(0, "k").unwrap().is_empty());
    assert!(st.idempotency_batch(1000, "k1").unwrap().is_empty());

    // The key cannot be reused for another kind of request, single or batch, nor a single
    // request's key for a batch.
    let install = IdempotencyKey {
        request: "install",
        ..key
    };
    assert!(matches!(
        st.create_change(&install_change("x"), Some(install)),
        Err(Error::KeyReused { .. })
    ));
    assert!(matches!(
        st.create_changes(&[install_change("x")], Some(install)),
        Err(Error::KeyReused { .. })
    ));
    let single = IdempotencyKey {
        key: "k2",
        ..install
    };
    st.create_change(&install_change("y"), Some(single))
        .unwrap();
    assert!(matches!(
        st.create_changes(
            &[install_change("z")],
            Some(IdempotencyKey { key: "k2", ..key })
        ),
        Err(Error::KeyReused { .. })
    ));

    // Keys live as long as their changes.
    for id in [a, c] {
        st.set_change_ready(id, Some(0)).unwrap();
    }
    st.prune(PrunePolicy::default(), now_ms()).unwrap();
    assert!(st.idempotency_batch(0, "k1").unwrap().is_empty());
}

#[test]
fn holds_are_set_for_all_or_none() {
    let mut st = State::open_in_memory().unwrap();
    for s in ["a", "b"] {
        st.put_snap(&snap_row(s)).unwrap();
    }
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let hold = |st: &State, s: &str| st.snap(s).unwrap().unwrap().hold;
    assert_eq!(
        st.set_holds(&names(&["a", "b"]), Some("forever")).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(hold(&st, "a").as_deref(), Some("forever"));
    // An unknown name: nothing changes.
    assert_eq!(
        st.set_holds(&names(&["a", "nope"]), Some("2026-11-21T20:15:03Z"))
            .unwrap(),
        ["nope"]
    );
    assert_eq!(hold(&st, "a").as_deref(), Some("forever"));
    st.set_holds(&names(&["a"]), None).unwrap();
    assert_eq!(hold(&st, "a"), None);
    assert_eq!(hold(&st, "b").as_deref(), Some("forever"));
}

#[test]
fn settings_are_kept_across_reopen_and_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    // A database from before settings existed gets the table.
    drop(State::setup(Connection::open(&path).unwrap(), 1).unwrap());
    {
        let mut st = State::open(&path).unwrap();
        assert_eq!(st.setting("auto-refresh.last").unwrap(), None);
        st.set_setting("auto-refresh.last", Some("1")).unwrap();
        st.set_setting("auto-refresh.last", Some("2")).unwrap();
        st.set_setting("other", Some("x")).unwrap();
        st.set_setting("other", None).unwrap();
    }
    let st = State::open(&path).unwrap();
    assert_eq!(
        st.setting("auto-refresh.last").unwrap().as_deref(),
        Some("2")
    );
    assert_eq!(st.setting("other").unwrap(), None);
}

#[test]
fn a_damaged_database_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut st = State::open(&path).unwrap();
        for i in 0..20 {
            st.create_change(&install_change(&format!("s{i}")), None)
                .unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 8192);
    let n = bytes.len();
    for (i, b) in bytes[4096..n].iter_mut().enumerate() {
        *b = (i * 13 + 1) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = State::open(&path).err().expect("a damaged database opened");
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("backup"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn the_database_and_its_companions_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let companions = ["state.db-wal", "state.db-shm"].map(|n| dir.path().join(n));
    {
        let mut st = State::open(&path).unwrap();
        st.put_snap(&snap_row("hello")).unwrap();
        assert_eq!(mode(&path), 0o600, "a new database");
        for p in &companions {
            assert_eq!(mode(p), 0o600, "{} of a new database", p.display());
        }
    }
    // Left readable by an older refreshd: private again at the next open.
    for p in std::iter::once(&path).chain(&companions) {
        if p.exists() {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let st = State::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600, "an existing database");
    for p in companions.iter().filter(|p| p.exists()) {
        assert_eq!(mode(p), 0o600, "{} of an existing database", p.display());
    }
    assert_eq!(st.snap("hello").unwrap().unwrap(), snap_row("hello"));
}

#[test]
fn a_read_only_connection_sees_commits_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut w = State::open(&path).unwrap();
    let mut r = State::open_read_only(&path).unwrap();
    assert!(r.snaps().unwrap().is_empty());
    w.put_snap(&snap_row("hello")).unwrap();
    assert_eq!(r.snaps().unwrap().len(), 1, "a commit is seen at once");
    assert!(r.put_snap(&snap_row("other")).is_err(), "read-only");
    // One read transaction is one moment: a commit made meanwhile is not half seen.
    let (before, after) = r
        .read(|r| {
            let before = r.snaps().unwrap().len();
            w.put_snap(&snap_row("second")).unwrap();
            (before, r.snaps().unwrap().len())
        })
        .unwrap();
    assert_eq!((before, after), (1, 1));
    assert_eq!(r.snaps().unwrap().len(), 2);
}

#[test]
fn snapshots_are_kept_listed_and_expire() {
    let mut st = State::open_in_memory().unwrap();
    let row = |id: u64, snap: &str, expires: Option<i64>| SnapshotRow {
        id,
        snap: snap.into(),
        revision: "x1".into(),
        version: "1.0".into(),
        users: vec![0, 1001],
        made: 10,
        expires,
    };
    st.put_snapshot(&row(3, "hello", Some(100))).unwrap();
    st.put_snapshot(&row(5, "other", None)).unwrap();
    st.put_snapshot(&row(4, "hello", Some(50))).unwrap();
    assert_eq!(st.snapshot(3).unwrap().unwrap(), row(3, "hello", Some(100)));
    let ids = |v: Vec<SnapshotRow>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(st.snapshots(None).unwrap()), [3, 4, 5]);
    assert_eq!(ids(st.snapshots(Some("hello")).unwrap()), [3, 4]);
    assert_eq!(st.next_snapshot_expiry().unwrap(), Some(50));
    assert_eq!(ids(st.expired_snapshots(60).unwrap()), [4]);
    // A restore swaps what a set holds: the same set, updated.
    let mut swapped = row(4, "hello", Some(500));
    swapped.revision = "x2".into();
    st.put_snapshot(&swapped).unwrap();
    assert_eq!(st.snapshot(4).unwrap().unwrap(), swapped);
    st.delete_snapshot(4).unwrap();
    assert_eq!(st.snapshot(4).unwrap(), None);
    assert_eq!(st.next_snapshot_expiry().unwrap(), Some(100));
}
