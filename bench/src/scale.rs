//! Section 7, the idle daemon: CPU time, wakeups and resident memory of a daemon with 1,000
//! installed snaps and 100 refreshes waiting on running apps, over a quiet window, against a
//! daemon with no snaps measured in the same window (and the polling backend for contrast); and
//! what wakes it. Section 8, scale: `refreshctl list` and `status` with 1,000 snaps against 1,
//! the state database's size, and the engine's throughput for trivial tasks against raw SQLite
//! commits.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use refreshd_tests::{self as h, App, Daemon, DaemonOpts, Root, Value};

use crate::refresh::{clk_tck, cpu_ticks, perf_profile, unix_ms, Breakdown};
use crate::report::{num, Figure, Section, Stats};
use crate::util::{self, Ctx};

/// How often the idle window samples /proc.
const SAMPLE: Duration = Duration::from_millis(250);
/// At most this many wakeups over the window count as "no periodic wakeups": a one-off event
/// (a retiring thread) may land in any window; a periodic one lands in every window.
const TOLERANCE: u64 = 5;
/// Parallel clients installing the snaps.
const CLIENTS: usize = 4;

pub fn run(ctx: &Ctx, s: &mut Section) -> anyhow::Result<()> {
    if !h::mksquashfs_available() {
        bail!("mksquashfs is missing (install squashfs-tools)");
    }
    let n_snaps = ctx.n(1000, 40);
    let n_wait = ctx.n(100, 8);
    let window = Duration::from_secs(ctx.n(60, 5) as u64);
    let poll_window = Duration::from_secs(ctx.n(10, 2) as u64);
    let pid = std::process::id();
    let extract = || DaemonOpts {
        extra_args: vec!["--extract".into()],
        ..Default::default()
    };

    // The idle baseline: the same daemon with no snaps, started first so that its start-up
    // threads have long retired when the window opens.
    let root0 = Root::new(&format!("bench-idle0-{pid}"));
    let d0 = Daemon::start_with(root0.path(), extract());

    let root = Root::new(&format!("bench-scale-{pid}"));
    let r = root.path();
    let v1 = root.aux("bs_1.0.snap");
    let v2 = root.aux("bs_2.0.snap");
    h::tracking_snap(&v1, "bs", "1.0", false);
    h::tracking_snap(&v2, "bs", "2.0", false);
    let names: Vec<String> = (0..n_snaps).map(|i| format!("bs_k{i:04}")).collect();
    let ns = count(n_snaps as u64);
    // Dropped in reverse: the daemon is stopped first, then the apps are killed, then the root
    // goes (with any process left in its cgroups).
    let mut apps: Vec<App> = vec![];
    let mut d = Some(Daemon::start_with(r, extract()));
    let info = h::ctl_json(r, &["status", "--json"]);
    let tracking = info["tracking"].as_str().unwrap_or("?").to_owned();

    // ---- 8. Scale: 1 snap, then N.
    println!("    installing {ns} snaps (extract mode, {CLIENTS} parallel clients)");
    let serial = ctx.n(5, 2).min(n_snaps / 4);
    let mut early = vec![install_timed(r, &v1, &names[0])?];
    let list_cmd = |what: &str| {
        format!(
            "{} --root {} {what}",
            h::bin("refreshctl").display(),
            r.display()
        )
    };
    let runs = ctx.n(30, 5);
    let one = util::hyperfine(
        ctx,
        &[("list", list_cmd("list")), ("status", list_cmd("status"))],
        runs,
        3,
        None,
    )?;
    let db_one = db_sizes(r)?;
    let (get_one, body_one) = raw_gets(r, "/v1/snaps", runs)?;
    for n in &names[1..serial] {
        early.push(install_timed(r, &v1, n)?);
    }
    let t = Instant::now();
    install_many(r, &v1, &names[serial..n_snaps - serial], CLIENTS)?;
    let bulk = t.elapsed();
    let mut late = vec![];
    for n in &names[n_snaps - serial..] {
        late.push(install_timed(r, &v1, n)?);
    }
    let setup = t.elapsed();
    let listed = h::ctl_json(r, &["list", "--json"]);
    if listed.as_array().map(Vec::len) != Some(n_snaps) {
        bail!(
            "{} snaps listed, {ns} installed",
            listed.as_array().map_or(0, Vec::len)
        );
    }
    let many = util::hyperfine(
        ctx,
        &[("list", list_cmd("list")), ("status", list_cmd("status"))],
        runs,
        3,
        None,
    )?;
    let db_many = db_sizes(r)?;
    let (get_many, body_many) = raw_gets(r, "/v1/snaps", runs)?;
    let list_profile = perf_profile(ctx, d.as_ref().unwrap().pid(), &mut || {
        raw_gets(r, "/v1/snaps", ctx.n(10, 2)).map(drop)
    });

    // ---- 7. Refreshes waiting on running apps.
    println!("    {n_wait} apps running, {n_wait} refreshes waiting for them");
    for n in &names[..n_wait] {
        apps.push(App::launch(r, &format!("{n}.hold")));
    }
    let mut ids = vec![];
    for n in &names[..n_wait] {
        let out = h::ctl(
            r,
            &["install", "--no-wait", "--name", n, &v2.to_string_lossy()],
        );
        if !out.status.success() {
            bail!("refresh of {n} refused: {}", h::text(&out.stderr).trim());
        }
        ids.push(
            h::text(&out.stdout)
                .trim()
                .parse::<u64>()
                .context("install --no-wait printed no change id")?,
        );
    }
    // Parked on their events alone: an event-driven backend gives a waiting refresh no timer
    // of its own (the daemon's one backstop timer covers them all).
    let mut with_deadline = 0;
    for &id in &ids {
        let c = h::watch_until(r, id, |c| wait_state(c).0 == "Wait");
        let (status, until) = wait_state(&c);
        if status != "Wait" {
            bail!("change {id}: wait-for-apps is {status}, not waiting: {c}");
        }
        with_deadline += usize::from(until.is_some());
    }
    let parked_ms = now_ms();

    // ---- 8. The engine in-process (the daemons are left alone meanwhile).
    println!("    engine throughput, raw SQLite commits");
    let (rounds, per_round) = (ctx.n(3, 1), ctx.n(300, 50));
    let engine_rates = engine_throughput(ctx, rounds, per_round, 8)?;
    let sqlite_rates = sqlite_commits(ctx, rounds, ctx.n(500, 100))?;

    // ---- 7. The idle window.
    let main_pid = d.as_ref().unwrap().pid();
    let settled = if ctx.quick {
        None
    } else {
        Some(settle(main_pid, d0.pid(), Duration::from_secs(15)))
    };
    println!("    idle window of {} s", window.as_secs());
    let start_ms = now_ms();
    let w = measure(&[main_pid, d0.pid()], window)?;
    let (wm, w0) = (&w[0], &w[1]);
    let mut still_waiting = 0;
    for &id in &ids {
        let (_, c) = h::http(r, "GET", &format!("/v1/changes/{id}"), &[], b"");
        still_waiting += usize::from(wait_state(&c).0 == "Wait");
    }

    // ---- 7. For contrast: the same root under the polling backend.
    println!(
        "    the same root under --tracking v1-poll, {} s",
        poll_window.as_secs()
    );
    d.take().unwrap().stop();
    d = Some(Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec!["--extract".into(), "--tracking".into(), "v1-poll".into()],
            ..Default::default()
        },
    ));
    let poll_info = h::ctl_json(r, &["status", "--json"]);
    for &id in &ids {
        let c = h::watch_until(r, id, |c| wait_state(c).0 == "Wait");
        if wait_state(&c).0 != "Wait" {
            bail!("under v1-poll, change {id} is no longer waiting: {c}");
        }
    }
    let wp = measure(&[d.as_ref().unwrap().pid()], poll_window)?.remove(0);

    // ---- Figures: 7.
    let secs = window.as_secs();
    let target_met = wm.wakeups <= TOLERANCE;
    s.push(
        Figure::new(
            format!("wakeups over {secs} s: {ns} snaps, {n_wait} refreshes waiting ({tracking})"),
            "wakeups",
            Stats::one(wm.wakeups as f64),
        )
        .against(
            format!("the same daemon with no snaps, same {secs} s"),
            Stats::one(w0.wakeups as f64),
        )
        .target(
            format!(
                "no periodic wakeups per waiting refresh (≤ {TOLERANCE} in {secs} s, the \
                 daemon's one backstop tick included)"
            ),
            target_met,
        ),
    );
    s.push(
        Figure::new(
            format!("CPU time over {secs} s (utime + stime, all threads)"),
            "ms",
            Stats::one(wm.cpu_ms),
        )
        .against("no snaps, same window", Stats::one(w0.cpu_ms)),
    );
    s.push(
        Figure::new(
            format!("resident memory (VmRSS) with {ns} snaps, {n_wait} refreshes waiting"),
            "MiB",
            Stats::one(wm.rss_kib as f64 / 1024.0),
        )
        .against("no snaps", Stats::one(w0.rss_kib as f64 / 1024.0)),
    );
    let psecs = poll_window.as_secs();
    s.push(
        Figure::new(
            format!("contrast: wakeups over {psecs} s, same root under --tracking v1-poll"),
            "wakeups",
            Stats::one(wp.wakeups as f64),
        )
        .note(format!(
            "CPU time {} ms over the {psecs} s; polled every {} (the default `--poll-interval-ms 1000`)",
            num(wp.cpu_ms),
            poll_info["tracking-reason"]
                .as_str()
                .and_then(|r| r.split("polled every ").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("1s")
        )),
    );

    // ---- Figures: 8.
    s.push(
        Figure::new(
            format!("`refreshctl list` with {ns} snaps"),
            "ms",
            many[0].clone(),
        )
        .against("with 1 snap", one[0].clone()),
    );
    s.push(
        Figure::new(
            format!("of which the daemon: `GET /v1/snaps` with {ns} snaps, raw over the socket"),
            "ms",
            Stats::ms(&get_many),
        )
        .against("with 1 snap", Stats::ms(&get_one))
        .note(format!(
            "one request per connection from this process, timed from connect to the end of \
             the answer ({} KiB of JSON; {} bytes with 1 snap); the rest of `list` is \
             refreshctl's start, parsing and printing",
            num(body_many as f64 / 1024.0),
            body_one
        )),
    );
    s.push(
        Figure::new(
            format!("`refreshctl status` with {ns} snaps"),
            "ms",
            many[1].clone(),
        )
        .against("with 1 snap", one[1].clone()),
    );
    s.push(
        Figure::new(
            format!("state database with {ns} snaps (page_count × page_size)"),
            "KiB",
            Stats::one(db_many.0 as f64 / 1024.0),
        )
        .against("with 1 snap", Stats::one(db_one.0 as f64 / 1024.0))
        .note(format!(
            "the database as a reader sees it, WAL included, read with a read-only SQLite \
             connection; on disk: state.db {} KiB, state.db-wal {} KiB, state.db-shm {} KiB \
             (with 1 snap: {}, {}, {} KiB) — the WAL is checkpointed into state.db at about 4 MiB, \
             so the files' split depends on when the last checkpoint ran",
            num(db_many.1 as f64 / 1024.0),
            num(db_many.2 as f64 / 1024.0),
            num(db_many.3 as f64 / 1024.0),
            num(db_one.1 as f64 / 1024.0),
            num(db_one.2 as f64 / 1024.0),
            num(db_one.3 as f64 / 1024.0),
        )),
    );
    s.push(
        Figure::new(
            "engine throughput: changes of one no-op task per second, 8 in flight",
            "/s",
            Stats::of(&engine_rates),
        )
        .against(
            "raw SQLite commits per second (WAL, synchronous=FULL), same disk",
            Stats::of(&sqlite_rates),
        )
        .note(format!(
            "the ratio is the share of a bare commit's rate the engine keeps: one change costs \
             about {} bare commits",
            num(Stats::of(&sqlite_rates).median / Stats::of(&engine_rates).median)
        )),
    );
    s.push(
        Figure::new(
            format!(
                "install of a small snap (extract mode), with {} installed",
                n_snaps - serial
            ),
            "ms",
            Stats::ms(&late.iter().map(|x| x.0).collect::<Vec<_>>()),
        )
        .against(
            format!("the first {serial} installs"),
            Stats::ms(&early.iter().map(|x| x.0).collect::<Vec<_>>()),
        ),
    );
    let install_table = {
        let times = |v: &[(Duration, Value)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
        let changes = |v: &[(Duration, Value)]| v.iter().map(|x| x.1.clone()).collect::<Vec<_>>();
        let a = Breakdown::of(&changes(&early), &times(&early))?;
        let b = Breakdown::of(&changes(&late), &times(&late))?;
        a.compare(&b, &format!("first {serial}"), &format!("last {serial}"))
    };

    // ---- Notes.
    s.note(format!(
        "**Set-up.** Two scratch roots, each with `refreshd --root ROOT --extract` (tracking \
         `{tracking}`: {}). Payloads are unpacked rather than loop-mounted so that {ns} \
         snaps need no {ns} loop devices; nothing measured here reads them. The snaps are \
         {ns} parallel instances (`bs_k0000`…) of one small snap (meta/snap.yaml and two \
         shell scripts, 4 KiB as squashfs), installed from the file with `refreshctl install \
         --name INSTANCE FILE` — each a full install change (prepare, mount, setup-data, link, \
         launchers, start-services) with its own blob, payload, data directory, launchers and \
         rows. The first {serial} and the last {serial} installs ran one at a time and are \
         timed (the last figure); the {} between ran from {CLIENTS} parallel clients in {} s \
         ({} installs/s); the whole set-up took {} s. Then the app `hold` of the first {n_wait} \
         instances was started through its launcher (each waits on its stdin: {n_wait} \
         processes), and version 2.0 of the file installed over each of them (`install \
         --no-wait`): {n_wait} refresh changes, each parked in `Wait` at wait-for-apps (checked \
         for every one through the change's watch stream).",
        info["tracking-reason"].as_str().unwrap_or("?"),
        n_snaps - 2 * serial,
        num(bulk.as_secs_f64()),
        num((n_snaps - 2 * serial) as f64 / bulk.as_secs_f64()),
        num(setup.as_secs_f64()),
    ));
    s.note(format!(
        "Where an install's time goes, the first {serial} against the last {serial} (medians; \
         from each change's record, as in 4.: a task's time runs from the previous task's ready \
         time, in whole milliseconds):\n\n{install_table}"
    ));
    let timeline = |x: &Window| {
        let v: Vec<String> = x
            .buckets()
            .iter()
            .take(12)
            .map(|(sec, n)| format!("{sec} s: {}", count(*n)))
            .collect();
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let mut idle = format!(
        "**Idle window.** Both daemons were sampled every {} ms for {secs} s while nothing \
         talked to them: CPU time is utime + stime of the process from /proc/PID/stat (every \
         thread, including any that exited; {} ms resolution); wakeups are every time one of its \
         threads ran, counted as the sum over /proc/PID/task/*/status of the growth of \
         `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` (a thread switches out once \
         per run), plus one for each thread that exited in the window (its last run is lost with \
         it); VmRSS is read at the end. ",
        SAMPLE.as_millis(),
        num(1000.0 / clk_tck()),
    );
    match settled {
        Some(Ok(t)) => {
            let _ = write!(
                idle,
                "Before the window opened, the busy daemon was left until its thread count fell \
                 to the idle daemon's ({} s: tokio's blocking threads retire after 10 s idle). ",
                num(t.as_secs_f64())
            );
        }
        Some(Err(e)) => {
            let _ = write!(idle, "Its threads had not settled before the window: {e}. ");
        }
        None => idle.push_str(
            "(Quick run: the window opened without waiting for idle threads to retire.) ",
        ),
    }
    let _ = write!(
        idle,
        "Tolerance of the target: ≤ {TOLERANCE} wakeups in the window — a one-off event such as \
         a thread retiring may fall into any window, a periodic one falls into every window.\n\n\
         With no snaps the daemon woke {} times (threads: {}). With {ns} snaps and {n_wait} \
         waiting refreshes it woke {} times; per second of the window (non-zero seconds only): \
         {}. Per thread: {}.",
        count(w0.wakeups),
        w0.threads_end,
        count(wm.wakeups),
        timeline(wm),
        wm.by_name()
    );
    s.note(idle);
    // The backstop sleeps 60 s from the first park, then ticks every 60 s while any waits.
    let ticks: Vec<String> = (1..)
        .map(|k| (parked_ms - start_ms) as f64 / 1e3 + 60.0 * k as f64)
        .take_while(|t| *t < secs as f64)
        .filter(|t| *t >= 0.0)
        .map(|t| format!("~{} s", num(t)))
        .collect();
    let cause = format!(
        "**What may wake it.** The {n_wait} refreshes park on their event alone \
         (`snap-idle:NAME`; {with_deadline} of them had a deadline of their own). While any \
         refresh waits, the daemon's one backstop timer (`BACKSTOP` in \
         refreshd/src/tracking/mod.rs, against events lost outside the protocol) looks at the \
         kernel every 60 s for the snaps refreshes wait for, with one database read, and wakes \
         only those with no process left; a daemon with no refresh waiting has no timer at all. \
         Its ticks fell at {} into the window (counted from the last park, the first \
         within a second of it). {} of the {n_wait} refreshes were still waiting after the \
         window.\n\n\
         **Found by this benchmark, and fixed.** Each waiting refresh used to carry its own 60 s \
         deadline: the engine woke, re-ran wait-for-apps (the snap's lock, `cgroup.procs` in \
         both hierarchies, /proc and /etc/passwd to describe the app) and parked it again with \
         two commits. With {n_wait} refreshes waiting that was 2,036 wakeups and 670 ms of CPU \
         per minute (about 20 wakeups and 6.6 ms per waiting refresh), against 0 for an idle \
         daemon. `tests/tests/tracking.rs::lost_exit_events_are_caught_by_the_backstop` shows \
         the shared backstop still catches a lost exit event, on v1 and v2.",
        if ticks.is_empty() {
            "none".to_owned()
        } else {
            ticks.join(", ")
        },
        still_waiting,
    );
    s.note(cause);
    s.note(format!(
        "**Contrast: polling.** The same root restarted with `--tracking v1-poll`: every waiting \
         task is re-run each poll interval. Over {psecs} s it woke {} times ({} per second) and \
         used {} ms of CPU — against {} wakeups over the {secs} s above with the release agent.",
        count(wp.wakeups),
        num(wp.wakeups as f64 / psecs as f64),
        num(wp.cpu_ms),
        count(wm.wakeups),
    ));
    s.note(match &list_profile {
        Ok(p) => format!(
            "**Where `list` goes with {ns} snaps.** {}% of its median is the daemon's \
             answer to `GET /v1/snaps` (figure above). For each snap, refreshd/src/api/snaps.rs \
             (`list`, `snap_json`) reads the snap's revision rows (a query each, the manifest \
             included) and parses the current revision's snap.yaml to list its apps, all under \
             the state's lock. A CPU profile of the daemon over {} more such requests \
             (`perf record -e cpu-clock -F 4999 -p PID`): {}",
            num(100.0 * Stats::ms(&get_many).median / many[0].median),
            ctx.n(10, 2),
            p.summary()
        ),
        Err(e) => format!("The CPU profile of `GET /v1/snaps` could not be taken: {e:#}."),
    });
    s.note(format!(
        "**Scale.** `refreshctl --root ROOT list` and `status` timed by `hyperfine -N` ({runs} \
         runs, 3 warm-up) on the same daemon, once with 1 snap installed and once with \
         {ns} (no change in progress either time). The state database's size is taken at \
         the same two points. The engine figure runs refreshd's own engine (`refreshd::engine::\
         Engine`, the daemon's code) in this process on a fresh state database in the scratch \
         directory, with one registered task kind whose handler returns `Done` at once, on a \
         tokio runtime with 2 workers like the daemon's: {rounds} rounds of {per_round} changes \
         of one task, created one per transaction as the API does, keeping 8 unfinished at a \
         time, timed from the first creation until the last is ready (rate per round). The \
         baseline is rusqlite on a database beside it with the same pragmas (WAL, \
         `synchronous=FULL`), one INSERT per transaction, {rounds} rounds."
    ));
    drop(d);
    drop(apps);
    drop(d0);
    Ok(())
}

/// `refreshctl install --name NAME FILE`, timed until the change is done.
fn install_one(r: &Path, file: &Path, name: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = h::ctl(r, &["install", "--name", name, &file.to_string_lossy()]);
    let d = t.elapsed();
    if !out.status.success() {
        bail!("install of {name} failed: {}", h::text(&out.stderr).trim());
    }
    Ok(d)
}

/// A count as text: digits grouped from 1,000 on.
fn count(n: u64) -> String {
    if n >= 1000 {
        num(n as f64)
    } else {
        n.to_string()
    }
}

/// [`install_one`], and the change it made (with its tasks).
fn install_timed(r: &Path, file: &Path, name: &str) -> anyhow::Result<(Duration, Value)> {
    let d = install_one(r, file, name)?;
    let id = h::newest_change(r);
    Ok((d, h::ctl_json(r, &["tasks", &id.to_string(), "--json"])))
}

/// `n` times `GET PATH` over the daemon's socket, one connection each; the times, and the
/// size of the last answer.
fn raw_gets(r: &Path, path: &str, n: usize) -> anyhow::Result<(Vec<Duration>, usize)> {
    use std::io::{Read as _, Write as _};
    let sock = r.join("run/refreshd.socket");
    let mut v = vec![];
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let mut c = std::os::unix::net::UnixStream::connect(&sock)?;
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = vec![];
        c.read_to_end(&mut buf)?;
        v.push(t.elapsed());
        if !buf.starts_with(b"HTTP/1.1 200") {
            bail!(
                "GET {path}: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            );
        }
        size = buf.len();
    }
    Ok((v, size))
}

/// Installs every name from `clients` parallel clients, each waiting for its change.
fn install_many(r: &Path, file: &Path, names: &[String], clients: usize) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                sc.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(n) = names.get(i) else {
                            return Ok(());
                        };
                        install_one(r, file, n)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow!("an installing client panicked"))??;
        }
        Ok(())
    })
}

/// The status of a change's wait-for-apps task and its deadline (unix ms) if it has one.
fn wait_state(c: &Value) -> (String, Option<i64>) {
    let t = c["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["kind"] == "wait-for-apps"));
    match t {
        Some(t) => (
            t["status"].as_str().unwrap_or("?").to_owned(),
            t["wait"]["until"].as_str().and_then(unix_ms),
        ),
        None => ("none".into(), None),
    }
}

/// The state database's size: (logical size, that is page_count × page_size as a reader sees
/// it through the WAL; then the sizes of the files state.db, state.db-wal and state.db-shm),
/// in bytes.
fn db_sizes(r: &Path) -> anyhow::Result<(u64, u64, u64, u64)> {
    let dir = r.join("var/lib/refreshd");
    let size = |f: &str| fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
    // A read-only reader beside the daemon: WAL readers never block or wake the writer.
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((
        pages * page,
        size("state.db"),
        size("state.db-wal"),
        size("state.db-shm"),
    ))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Each thread's context switches (voluntary + involuntary) and name.
fn threads(pid: i32) -> anyhow::Result<HashMap<i32, (u64, String)>> {
    let mut out = HashMap::new();
    let dir = format!("/proc/{pid}/task");
    for e in fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let e = e?;
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read: it is then simply absent.
        let Ok(text) = fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let mut switches = 0u64;
        let mut name = String::new();
        for l in text.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            } else if let Some(v) = l.strip_prefix("Name:") {
                name = v.trim().to_owned();
            }
        }
        out.insert(tid, (switches, name));
    }
    Ok(out)
}

/// What one process did over a window.
struct Window {
    wakeups: u64,
    exited: u64,
    cpu_ms: f64,
    rss_kib: u64,
    threads_end: usize,
    /// (seconds since the window opened, wakeups since the previous sample, of which threads
    /// that exited, CPU clock ticks since the previous sample).
    samples: Vec<(f64, u64, u64, u64)>,
    /// Wakeups per thread name.
    names: BTreeMap<String, u64>,
}

impl Window {
    /// Wakeups per whole second of the window, the non-zero ones.
    fn buckets(&self) -> Vec<(u64, u64)> {
        let mut m: BTreeMap<u64, u64> = BTreeMap::new();
        for &(t, n, _, _) in &self.samples {
            if n > 0 {
                *m.entry(t.ceil().max(1.0) as u64 - 1).or_default() += n;
            }
        }
        m.into_iter().collect()
    }

    fn by_name(&self) -> String {
        let v: Vec<String> = self
            .names
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("`{k}` {}", count(*n)))
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }
}

/// Samples the processes every [`SAMPLE`] for `len`, from /proc only (reading another
/// process's /proc files does not wake it).
fn measure(pids: &[i32], len: Duration) -> anyhow::Result<Vec<Window>> {
    struct St {
        last: HashMap<i32, (u64, String)>,
        cpu0: u64,
        cpu_last: u64,
        w: Window,
    }
    let mut st = vec![];
    for &p in pids {
        st.push(St {
            last: threads(p)?,
            cpu0: cpu_ticks(p)?.0,
            cpu_last: cpu_ticks(p)?.0,
            w: Window {
                wakeups: 0,
                exited: 0,
                cpu_ms: 0.0,
                rss_kib: 0,
                threads_end: 0,
                samples: vec![],
                names: BTreeMap::new(),
            },
        });
    }
    let t0 = Instant::now();
    let mut k = 1u32;
    loop {
        let due = SAMPLE * k;
        let now = t0.elapsed();
        if due > now {
            // The sampling period: a measurement interval, not a wait for an event.
            std::thread::sleep((due - now).min(len.saturating_sub(now)));
        }
        let at = t0.elapsed().as_secs_f64();
        for (x, &p) in st.iter_mut().zip(pids) {
            let cur = threads(p)?;
            let cpu = cpu_ticks(p)?.0;
            let mut n = 0u64;
            let mut gone = 0u64;
            for (tid, (_, name)) in &x.last {
                if !cur.contains_key(tid) {
                    gone += 1;
                    *x.w.names.entry(name.clone()).or_default() += 1;
                }
            }
            n += gone;
            x.w.exited += gone;
            for (tid, (sw, name)) in &cur {
                let before = x.last.get(tid).map_or(0, |v| v.0);
                let d = sw.saturating_sub(before);
                n += d;
                if d > 0 {
                    *x.w.names.entry(name.clone()).or_default() += d;
                }
            }
            x.w.wakeups += n;
            x.w.samples
                .push((at, n, gone, cpu.saturating_sub(x.cpu_last)));
            x.cpu_last = cpu;
            x.last = cur;
        }
        if t0.elapsed() >= len {
            break;
        }
        k += 1;
    }
    let mut out = vec![];
    for (mut x, &p) in st.into_iter().zip(pids) {
        let ticks = cpu_ticks(p)?.0.saturating_sub(x.cpu0);
        x.w.cpu_ms = ticks as f64 * 1000.0 / clk_tck();
        x.w.rss_kib = util::rss_kib(p)?;
        x.w.threads_end = x.last.len();
        out.push(x.w);
    }
    Ok(out)
}

/// Waits (polling /proc: no event says a thread retired) until `pid` has no more threads than
/// the idle reference daemon `reference`, at most `limit`.
fn settle(pid: i32, reference: i32, limit: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        let (a, b) = (threads(pid)?.len(), threads(reference)?.len());
        if a <= b {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("after {limit:?} it still had {a} threads against {b}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A task kind whose handler does nothing.
struct Noop;

impl refreshd::engine::Handler for Noop {
    fn run(
        &self,
        _: &refreshd::engine::TaskCtx,
        _: refreshd::engine::Phase,
    ) -> refreshd::engine::Outcome {
        refreshd::engine::Outcome::Done
    }
}

/// Changes per second through refreshd's engine: `rounds` rounds of `total` changes of one
/// no-op task, `in_flight` unfinished at a time, each round on a fresh database.
fn engine_throughput(
    ctx: &Ctx,
    rounds: usize,
    total: usize,
    in_flight: usize,
) -> anyhow::Result<Vec<f64>> {
    use refreshd::engine::{Engine, Handler};
    use refreshd_state::{NewChange, NewTask, PrunePolicy, Select, State};
    use tokio::sync::broadcast::error::RecvError;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rates = vec![];
    for round in 0..rounds {
        let dir = tempfile::Builder::new()
            .prefix("engine-")
            .tempdir_in(&ctx.work)?;
        let db = refreshd::db::Db::new(State::open(&dir.path().join("state.db"))?);
        let mut handlers: HashMap<String, Arc<dyn Handler>> = HashMap::new();
        handlers.insert("noop".into(), Arc::new(Noop));
        let rate = rt.block_on(async move {
            let engine = Engine::new(db, handlers, PrunePolicy::default());
            let stop = tokio_util::sync::CancellationToken::new();
            let runner = tokio::spawn({
                let (e, s) = (engine.clone(), stop.clone());
                async move { e.run(s, Duration::from_secs(5)).await }
            });
            let mut rx = engine.subscribe();
            let t = Instant::now();
            let mut created = 0usize;
            let result = async {
                loop {
                    let open = engine
                        .db()
                        .call(|s| s.changes(Select::InProgress, None).map(|v| v.len()))
                        .await?;
                    if created == total && open == 0 {
                        return Ok::<_, anyhow::Error>(total as f64 / t.elapsed().as_secs_f64());
                    }
                    let want = in_flight.saturating_sub(open).min(total - created);
                    for i in 0..want {
                        let n = NewChange {
                            kind: "bench".into(),
                            summary: format!("no-op change {}", created + i),
                            snap: None,
                            data: serde_json::json!({}),
                            tasks: vec![NewTask {
                                kind: "noop".into(),
                                summary: "do nothing".into(),
                                data: serde_json::json!({}),
                                waits_for: vec![],
                            }],
                        };
                        engine.db().call(move |s| s.create_change(&n, None)).await?;
                        engine.ensure();
                    }
                    created += want;
                    // Event-driven: the engine announces every change whose state moved.
                    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                        Err(_) => bail!("the engine made no progress for 30 s (round {round})"),
                        Ok(Err(RecvError::Closed)) => bail!("the engine stopped"),
                        Ok(_) => while rx.try_recv().is_ok() {},
                    }
                }
            }
            .await;
            stop.cancel();
            let _ = runner.await;
            result
        })?;
        rates.push(rate);
    }
    Ok(rates)
}

/// Commits per second of one small INSERT per transaction, with the state database's pragmas.
fn sqlite_commits(ctx: &Ctx, rounds: usize, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut rates = vec![];
    for _ in 0..rounds {
        let dir = tempfile::Builder::new()
            .prefix("sqlite-")
            .tempdir_in(&ctx.work)?;
        let path: PathBuf = dir.path().join("raw.db");
        let conn = rusqlite::Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
            [],
        )?;
        let t = Instant::now();
        for i in 0..n {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])?;
        }
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(rates)
}
