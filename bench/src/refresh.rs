//! Section 4, refresh end to end: wall time of `refreshctl refresh NAME` for a small snap with no
//! running app, from a local directory store, until the change is done — against the kernel
//! work no refresh can avoid (a loop mount and unmount of the same image), with the time of each
//! task from the change's own record, and a syscall count of one refresh; then what a signed
//! store costs against an unsigned one (signed.rs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use refreshd_tests::{self as h, Daemon, DaemonOpts, Root, Value};

use crate::report::{num, Figure, Section, Stats};
use crate::util::{self, Ctx};

/// The snap refreshed: `tracking_snap`'s two shell-script apps, about 4 KiB as squashfs.
const NAME: &str = "rb";

pub fn run(ctx: &Ctx, s: &mut Section) -> anyhow::Result<()> {
    if !h::mksquashfs_available() {
        bail!("mksquashfs is missing (install squashfs-tools)");
    }
    let runs = ctx.n(20, 3);
    let warmup = ctx.n(2, 1);
    let root = Root::new(&format!("bench-refresh-{}", std::process::id()));
    let r = root.path();
    let store = root.aux("store");
    fs::create_dir(&store)?;

    // Revision 1 is installed; each warm-up and timed run refreshes to the next one; then one
    // more under strace, and a few more under perf.
    let profiled = ctx.n(8, 2);
    let revisions = 1 + warmup + runs + 1 + profiled;
    println!("    building {revisions} revisions of a small snap");
    let blobs: Vec<PathBuf> = (1..=revisions)
        .map(|i| {
            let b = root.aux(&format!("{NAME}-{i}.snap"));
            h::tracking_snap(&b, NAME, &format!("{i}.0"), false);
            b
        })
        .collect();
    let publish = |i: usize| -> anyhow::Result<()> {
        let e = refreshd_store::publish(&store, &blobs[i], "stable").map_err(|e| {
            match e.says_publish() {
                true => anyhow::Error::new(e),
                false => {
                    anyhow::Error::new(e).context(format!("cannot publish {}", blobs[i].display()))
                }
            }
        })?;
        if e.revision as usize != i + 1 {
            bail!("published as revision {}, expected {}", e.revision, i + 1);
        }
        Ok(())
    };
    publish(0)?;
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec![
                "--insecure-unsigned-store".into(),
                "--store".into(),
                store.to_string_lossy().into_owned(),
            ],
            ..Default::default()
        },
    );
    let info = h::ctl_json(r, &["status", "--json"]);
    let out = h::ctl(r, &["install", NAME]);
    if !out.status.success() {
        bail!("install {NAME} failed: {}", h::text(&out.stderr).trim());
    }

    println!("    {warmup} warm-up and {runs} timed refreshes");
    let mut walls = vec![];
    let mut changes = vec![];
    let mut cpu = (0u64, 0u64);
    for i in 1..=warmup + runs {
        publish(i)?;
        let before = cpu_ticks(d.pid())?;
        let t = Instant::now();
        let out = Command::new(h::bin("refreshctl"))
            .arg("--root")
            .arg(r)
            .args(["refresh", NAME])
            .stdin(Stdio::null())
            .output()
            .context("cannot run refreshctl")?;
        let wall = t.elapsed();
        if !out.status.success() {
            bail!(
                "refreshctl refresh {NAME} failed: {}",
                h::text(&out.stderr).trim()
            );
        }
        let current = fs::read_link(r.join(format!("snap/{NAME}/current")))?;
        if current != Path::new(&(i + 1).to_string()) {
            bail!("after refresh {i}, current is {current:?}, not {}", i + 1);
        }
        if i > warmup {
            let after = cpu_ticks(d.pid())?;
            cpu.0 += after.0 - before.0;
            cpu.1 += after.1 - before.1;
            walls.push(wall);
            let id = h::newest_change(r);
            changes.push(h::ctl_json(r, &["tasks", &id.to_string(), "--json"]));
        }
    }

    println!("    baseline: loop mount + unmount of the same image, fsync floor");
    let mounts = mount_cycles(ctx, &blobs[0], runs)?;
    let fsyncs = fsync_floor(ctx, ctx.n(200, 50))?;

    println!("    one more refresh under strace -f -c");
    let traced_rev = 1 + warmup + runs;
    publish(traced_rev)?;
    let traced = strace_refresh(ctx, &d, r);
    println!("    {profiled} more under perf record");
    let profile = perf_refreshes(ctx, &d, r, &publish, traced_rev + 1, profiled);

    // The figures.
    let wall = Stats::ms(&walls);
    let mount = Stats::ms(&mounts);
    let fsync = Stats::ms(&fsyncs);
    let breakdown = Breakdown::of(&changes, &walls)?;
    s.push(
        Figure::new(
            "`refreshctl refresh` of a small snap, no app running, until done",
            "ms",
            wall.clone(),
        )
        .against("loop mount + unmount of the same image", mount.clone())
        .note(
            "fork + exec + wait of refreshctl, which sends the request and follows the change \
             until it is done. For scale (not measured here): snapd 2.57 takes about 360–750 ms \
             for the same on this machine kind.",
        ),
    );
    s.push(
        Figure::new(
            "the change itself (spawn → ready, from its record)",
            "ms",
            Stats::of(&breakdown.change),
        )
        .against("loop mount + unmount of the same image", mount.clone()),
    );
    if !breakdown.critical.is_empty() {
        s.push(
            Figure::new(
                "critical section (wait-for-apps entered → lift-inhibition left)",
                "ms",
                Stats::of(&breakdown.critical),
            )
            .note("from the `at=` nanosecond stamps the two tasks log"),
        );
    }
    let per = |t: u64| t as f64 * 1000.0 / clk_tck() / runs as f64;
    s.push(
        Figure::new(
            "daemon CPU time per refresh (its threads + the children it ran)",
            "ms",
            Stats::one(per(cpu.0 + cpu.1)),
        )
        .against("the change's wall time", Stats::of(&breakdown.change))
        .note(format!(
            "utime + stime of refreshd over the timed runs, divided by their number: {} ms in \
             its own threads, {} ms in the processes it started and waited for (unsquashfs); \
             /proc counts in {} ms ticks, so this is the mean of {runs} runs, not a median",
            num(per(cpu.0)),
            num(per(cpu.1)),
            num(1000.0 / clk_tck()),
        )),
    );
    s.push(Figure::new(
        "fsync of a 4 KiB write on the same disk (the floor of one durable commit)",
        "ms",
        fsync.clone(),
    ));

    s.note(format!(
        "A scratch root with a daemon started as `refreshd --root ROOT --store DIR` (mount mode \
         `{}`, tracking `{}`; payloads are loop-mounted, as by default), a directory store, and \
         the snap `{NAME}` (meta/snap.yaml and two shell scripts, about 4 KiB as squashfs) \
         installed from it at revision 1. Before each run the next revision is published with \
         `refreshd_store::publish` (not timed); then `refreshctl --root ROOT refresh {NAME}` is \
         timed from fork to exit (it follows the change until it is done; its exit status and \
         the new `current` link are checked). {warmup} untimed warm-up runs come first; each run \
         refreshes to a new revision, and with the default retain count of 2 each one also \
         discards the revision before last (unmount, data, blob). The baseline is the kernel \
         work a refresh cannot avoid, timed the same way in this process: attaching the same \
         image to a loop device and mounting it read-only with `refreshd_snap::mount_squashfs` \
         (what the mount task calls), then unmounting it. The fsync figure is a 4 KiB `write` + \
         `fsync` on a file beside the root, repeated: every commit of the state database \
         (WAL, `synchronous=FULL`) costs at least one.",
        info["mount-mode"].as_str().unwrap_or("?"),
        info["tracking"].as_str().unwrap_or("?"),
    ));
    s.note(breakdown.table(&fsync));
    match profile {
        Ok(p) => s.note(p.describe(profiled)),
        Err(e) => s.note(format!(
            "The CPU profile of the refreshes could not be taken: {e:#}."
        )),
    }
    match traced {
        Ok(t) => s.note(t.describe(&fsync, &breakdown)),
        Err(e) => s.note(format!(
            "The syscall count of one refresh could not be taken: {e:#}."
        )),
    }
    // This root's daemon stops first: the next part runs daemons of its own.
    drop(d);
    drop(root);
    println!("    the cost of a signed store");
    crate::signed::run(ctx, s)
}

/// Clock ticks per second (the unit of /proc/PID/stat's times).
pub(crate) fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time of a process in clock ticks: (utime + stime of all its threads, cutime + cstime of
/// the children it has waited for).
pub(crate) fn cpu_ticks(pid: i32) -> anyhow::Result<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = s.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if f.len() < 4 {
        bail!("malformed /proc/{pid}/stat");
    }
    // Fields 14–17 of stat; `rest` starts at field 3.
    Ok((f[0] + f[1], f[2] + f[3]))
}

/// `n` loop mounts and unmounts of `image`, each timed as one.
fn mount_cycles(ctx: &Ctx, image: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    let target = ctx.work.join(format!("refresh-mnt-{}", std::process::id()));
    fs::create_dir_all(&target)?;
    let guard = Unmount(target.clone());
    let mut v = vec![];
    for _ in 0..n {
        let t = Instant::now();
        refreshd_snap::mount_squashfs(image, &target)
            .with_context(|| format!("cannot loop-mount {}", image.display()))?;
        refreshd_snap::unmount(&target)?;
        v.push(t.elapsed());
    }
    drop(guard);
    let _ = fs::remove_dir(&target);
    Ok(v)
}

/// Unmounts its directory on drop if something is still mounted there (an error mid-loop).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if refreshd_snap::mount::is_mountpoint(&self.0).unwrap_or(false) {
            let _ = refreshd_snap::unmount(&self.0);
        }
    }
}

/// `n` times: write 4 KiB at the start of a file and fsync it.
fn fsync_floor(ctx: &Ctx, n: usize) -> anyhow::Result<Vec<Duration>> {
    let path = ctx.work.join(format!("fsync-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)?;
    let block = [0x5au8; 4096];
    let mut v = vec![];
    for _ in 0..n {
        let t = Instant::now();
        std::os::unix::fs::FileExt::write_all_at(&f, &block, 0)?;
        f.sync_all()?;
        v.push(t.elapsed());
    }
    f.flush()?;
    drop(f);
    let _ = fs::remove_file(&path);
    Ok(v)
}

/// Where the time of the timed refreshes went, from each change's record: a task's time is
/// from the previous task's ready time (the change's spawn time for the first) to its own —
/// the tasks run one after another, so this includes the engine's commits between them.
pub(crate) struct Breakdown {
    kinds: Vec<String>,
    per_kind: BTreeMap<String, Vec<f64>>,
    change: Vec<f64>,
    outside: Vec<f64>,
    critical: Vec<f64>,
}

impl Breakdown {
    pub(crate) fn of(changes: &[Value], walls: &[Duration]) -> anyhow::Result<Breakdown> {
        let mut b = Breakdown {
            kinds: vec![],
            per_kind: BTreeMap::new(),
            change: vec![],
            outside: vec![],
            critical: vec![],
        };
        for (c, wall) in changes.iter().zip(walls) {
            if c["status"] != "Done" {
                bail!("a timed refresh ended {}: {c}", c["status"]);
            }
            let spawn = time_of(&c["spawn-time"]).context("change without spawn-time")?;
            let ready = time_of(&c["ready-time"]).context("change without ready-time")?;
            let mut prev = spawn;
            for t in c["tasks"].as_array().context("change without tasks")? {
                let kind = t["kind"].as_str().unwrap_or("?").to_owned();
                let at = time_of(&t["ready-time"]).context("task without ready-time")?;
                if !b.kinds.contains(&kind) {
                    b.kinds.push(kind.clone());
                }
                b.per_kind.entry(kind).or_default().push((at - prev) as f64);
                prev = at;
            }
            let total = (ready - spawn) as f64;
            b.change.push(total);
            b.outside.push(wall.as_secs_f64() * 1e3 - total);
            let entered = h::logged_at(c, "wait-for-apps", "critical section entered");
            let left = h::logged_at(c, "lift-inhibition", "critical section left");
            if let (Some(e), Some(l)) = (entered, left) {
                b.critical.push(l.saturating_sub(e) as f64 / 1e6);
            }
        }
        Ok(b)
    }

    /// Two sets of changes of the same kind side by side: median time per task.
    pub(crate) fn compare(&self, other: &Breakdown, a: &str, b: &str) -> String {
        let mut t = format!("| task | {a}: median ms | {b}: median ms |\n|---|---:|---:|\n");
        let med = |x: &Breakdown, k: &str| {
            x.per_kind
                .get(k)
                .map_or("–".to_owned(), |v| num(Stats::of(v).median))
        };
        for k in &self.kinds {
            let _ = writeln!(t, "| {k} | {} | {} |", med(self, k), med(other, k));
        }
        let _ = writeln!(
            t,
            "| **the change, spawn → ready** | **{}** | **{}** |\n\
             | outside the change (refreshctl, request, following it) | {} | {} |",
            num(Stats::of(&self.change).median),
            num(Stats::of(&other.change).median),
            num(Stats::of(&self.outside).median),
            num(Stats::of(&other.outside).median),
        );
        t
    }

    fn table(&self, fsync: &Stats) -> String {
        let mut t = String::from(
            "Where a refresh's time goes (medians over the timed runs, from each change's \
             record: a task's time runs from the previous task's ready time, or the change's \
             spawn time for the first, to its own, so it includes the engine's commits of its \
             `Doing` and `Done` statuses; times are recorded to the millisecond, so a task under \
             1 ms can show as 0 and its neighbour carries the rounding):\n\n\
             | task | median ms | min | max |\n|---|---:|---:|---:|\n",
        );
        for k in &self.kinds {
            let st = Stats::of(&self.per_kind[k]);
            let _ = writeln!(
                t,
                "| {k} | {} | {} | {} |",
                num(st.median),
                num(st.min),
                num(st.max)
            );
        }
        let c = Stats::of(&self.change);
        let o = Stats::of(&self.outside);
        let _ = writeln!(
            t,
            "| **the change, spawn → ready** | **{}** | {} | {} |\n\
             | outside the change: refreshctl's start, the request, the store lookup before the \
             change exists, following it to the end, exit | {} | {} | {} |",
            num(c.median),
            num(c.min),
            num(c.max),
            num(o.median),
            num(o.min),
            num(o.max),
        );
        let _ = write!(
            t,
            "\nThe engine commits each task twice (`Doing` before its handler runs, then its \
             outcome), so {} tasks make at least {} commits of the state database, each at \
             least one fsync ({} ms here): about {} ms of the change's {} ms. The median task \
             takes {} ms: the change's time is spread over its {} steps, each \
             paying the engine's round trip (commit, hand-off to a blocking thread, handler, \
             commit, the next scheduling pass, a snapshot to the watching client); 8. measures \
             that round trip alone with no-op tasks.",
            self.kinds.len(),
            2 * self.kinds.len(),
            num(fsync.median),
            num(2.0 * self.kinds.len() as f64 * fsync.median),
            num(c.median),
            num(Stats::of(
                &self
                    .kinds
                    .iter()
                    .map(|k| Stats::of(&self.per_kind[k]).median)
                    .collect::<Vec<_>>()
            )
            .median),
            self.kinds.len(),
        );
        t
    }
}

/// Unix milliseconds of an API time (`"2026-11-21T20:15:03.12Z"`).
fn time_of(v: &Value) -> Option<i64> {
    unix_ms(v.as_str()?)
}

/// Parses the API's RFC 3339 UTC times (`YYYY-MM-DDTHH:MM:SS[.fff…]Z`) to unix milliseconds.
pub(crate) fn unix_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().ok()?
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// What `strace -f -c -w` saw the daemon do during one refresh.
pub(crate) struct Traced {
    pub(crate) wall: Duration,
    /// (syscall, calls, seconds), as strace summarised them.
    pub(crate) rows: Vec<(String, u64, f64)>,
}

/// Attaches `strace -f -c -w` to the daemon, runs one refresh, and detaches.
fn strace_refresh(ctx: &Ctx, d: &Daemon, r: &Path) -> anyhow::Result<Traced> {
    strace_during(ctx, d.pid(), &mut || {
        let o = h::ctl(r, &["refresh", NAME]);
        if !o.status.success() {
            bail!("the traced refresh failed: {}", h::text(&o.stderr).trim());
        }
        Ok(())
    })
}

/// Attaches `strace -f -c -w` to process `pid` (every thread, and the processes it starts),
/// runs `work`, and detaches: how long `work` took under strace, and strace's summary.
pub(crate) fn strace_during(
    ctx: &Ctx,
    pid: i32,
    work: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Traced> {
    if !util::have("strace") {
        bail!("strace is not installed");
    }
    let out = tempfile::Builder::new()
        .prefix("strace-")
        .suffix(".txt")
        .tempfile_in(&ctx.work)?
        .into_temp_path();
    let mut st = Command::new("strace")
        .args(["-f", "-c", "-w", "-o"])
        .arg(&out)
        .arg("-p")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start strace")?;
    let guard = Child(st.id() as i32);
    // strace says on stderr when it has attached: no guessing with a sleep.
    let mut lines = BufReader::new(st.stderr.take().unwrap()).lines();
    let attached = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("attached"));
    if !attached {
        bail!("strace did not attach to the daemon");
    }
    // Keep draining strace's stderr so it never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let t = Instant::now();
    let worked = work();
    let wall = t.elapsed();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(st.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    st.wait()?;
    std::mem::forget(guard);
    let _ = drain.join();
    worked?;
    let text = fs::read_to_string(&out)?;
    let mut rows = vec![];
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() < 5 || w[0].parse::<f64>().is_err() || w.last() == Some(&"total") {
            continue;
        }
        let (Ok(secs), Ok(calls)) = (w[1].parse::<f64>(), w[3].parse::<u64>()) else {
            continue;
        };
        rows.push((w[w.len() - 1].to_owned(), calls, secs));
    }
    if rows.is_empty() {
        bail!("strace printed no summary");
    }
    Ok(Traced { wall, rows })
}

/// Where the daemon's CPU went over some refreshes, from `perf record -e cpu-clock`.
pub(crate) struct Profile {
    /// As perf reports it ("866", "2K").
    samples: String,
    /// (category, percent of samples), largest first.
    groups: Vec<(String, f64)>,
    /// The busiest symbols: (percent, where, symbol).
    top: Vec<(f64, String, String)>,
}

/// Profiles the daemon over `n` refreshes, to revisions `from + 1`….
fn perf_refreshes(
    ctx: &Ctx,
    d: &Daemon,
    r: &Path,
    publish: &dyn Fn(usize) -> anyhow::Result<()>,
    from: usize,
    n: usize,
) -> anyhow::Result<Profile> {
    perf_profile(ctx, d.pid(), &mut || {
        for i in from..from + n {
            publish(i)?;
            let o = h::ctl(r, &["refresh", NAME]);
            if !o.status.success() {
                bail!("a profiled refresh failed: {}", h::text(&o.stderr).trim());
            }
        }
        Ok(())
    })
}

/// Profiles process `pid` (every thread, and the processes it starts) while `work` runs:
/// `perf record -e cpu-clock` starts disabled, is enabled through its control pipe and
/// acknowledges it (so nothing is missed and nothing is guessed), and stops on SIGINT.
pub(crate) fn perf_profile(
    ctx: &Ctx,
    pid: i32,
    work: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Profile> {
    use std::io::Read as _;
    use std::os::fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _};
    use std::os::unix::process::CommandExt as _;
    if !util::have("perf") {
        bail!("perf is not installed (linux-perf)");
    }
    let data = ctx
        .work
        .join(format!("refresh-perf-{}.data", std::process::id()));
    // Control pipe (we write, perf reads) and ack pipe (perf writes, we read), close-on-exec
    // except in perf.
    let (ctl_r, ctl_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (ack_r, ack_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (cr, aw) = (ctl_r.as_raw_fd(), ack_w.as_raw_fd());
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-q", "-e", "cpu-clock", "-F", "4999", "-D", "-1"])
        .arg("--control")
        .arg(format!("fd:{cr},{aw}"))
        .arg("-p")
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe fcntl calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [cr, aw] {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut perf = cmd.spawn().context("cannot start perf")?;
    let guard = Child(perf.id() as i32);
    drop(ctl_r);
    drop(ack_w);
    let mut ctl = fs::File::from(ctl_w);
    // SAFETY: the fd is ours alone from here on.
    let mut ack = unsafe { fs::File::from_raw_fd(ack_r.into_raw_fd()) };
    ctl.write_all(b"enable\n")?;
    let mut buf = [0u8; 16];
    let got = ack.read(&mut buf)?;
    if !buf[..got].starts_with(b"ack") {
        bail!("perf did not acknowledge enabling ({got} bytes)");
    }
    work()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    perf.wait()?;
    std::mem::forget(guard);
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "comm,dso,sym",
            "-i",
        ])
        .arg(&data)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run perf report")?;
    let _ = fs::remove_file(&data);
    let _ = fs::remove_file(data.with_extension("data.old"));
    Profile::parse(&h::text(&out.stdout))
}

impl Profile {
    fn parse(text: &str) -> anyhow::Result<Profile> {
        let mut samples = String::new();
        let mut groups: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut top = vec![];
        for l in text.lines() {
            if let Some(n) = l.strip_prefix("# Samples: ") {
                samples = n.split_whitespace().next().unwrap_or("").to_owned();
                continue;
            }
            if l.starts_with('#') || l.trim().is_empty() {
                continue;
            }
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 5 {
                continue;
            }
            let Ok(pct) = w[0].trim_end_matches('%').parse::<f64>() else {
                continue;
            };
            let (comm, dso, sym) = (w[1], w[2], w[4..].join(" "));
            let kernel = dso.contains("kernel");
            let group = if comm != "tokio-rt-worker" && comm != "refreshd" {
                "processes the daemon started (unsquashfs), kernel and user"
            } else if kernel {
                "kernel, in the daemon's threads"
            } else if sym.contains("sqlite") || sym.starts_with("btree") || sym.contains("Vdbe") {
                "SQLite (incl. rusqlite)"
            } else if sym.contains("serde_json") {
                "JSON (serde_json)"
            } else if sym.contains("yaml") || sym.contains("norway") {
                "YAML (serde_norway, unsafe-libyaml)"
            } else if ["malloc", "free", "realloc", "memalign"]
                .iter()
                .any(|m| sym.contains(m))
            {
                "memory allocation (glibc malloc)"
            } else {
                "the rest of refreshd and its libraries"
            };
            *groups.entry(group).or_default() += pct;
            top.push((pct, if kernel { "kernel" } else { dso }.to_owned(), sym));
        }
        if samples.is_empty() || samples == "0" || groups.is_empty() {
            bail!("perf recorded no samples");
        }
        let mut groups: Vec<(String, f64)> =
            groups.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        groups.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        top.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
        top.truncate(8);
        Ok(Profile {
            samples,
            groups,
            top,
        })
    }

    /// By kind, then the busiest symbols, as one sentence each.
    pub(crate) fn summary(&self) -> String {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|(k, v)| format!("{k} {}%", num(*v)))
            .collect();
        let top: Vec<String> = self
            .top
            .iter()
            .map(|(p, dso, sym)| format!("`{sym}` ({dso}) {}%", num(*p)))
            .collect();
        format!(
            "{} samples. By kind: {}. The busiest symbols: {}.",
            self.samples,
            groups.join("; "),
            top.join(", ")
        )
    }

    fn describe(&self, n: usize) -> String {
        format!(
            "Where the daemon's CPU goes: {n} more refreshes, not among the timed ones, ran with \
             `perf record -e cpu-clock -F 4999 -p PID` attached to the daemon (every thread and \
             the processes it started): {}",
            self.summary()
        )
    }
}

/// Kills a child we started if we leave early (by pid; it is ours).
struct Child(i32);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.0), None);
    }
}

impl Traced {
    pub(crate) fn get(&self, name: &str) -> (u64, f64) {
        self.rows
            .iter()
            .filter(|r| r.0 == name)
            .fold((0, 0.0), |a, r| (a.0 + r.1, a.1 + r.2))
    }

    fn describe(&self, fsync: &Stats, b: &Breakdown) -> String {
        let (fs_n, fs_s) = ["fsync", "fdatasync"]
            .iter()
            .map(|n| self.get(n))
            .fold((0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
        let (ex_n, _) = self.get("execve");
        let (cl_n, _) = ["clone", "clone3"]
            .iter()
            .map(|n| self.get(n))
            .fold((0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
        let waits = ["futex", "epoll_wait", "epoll_pwait", "restart_syscall"];
        let total: u64 = self
            .rows
            .iter()
            .filter(|r| !waits.contains(&r.0.as_str()))
            .map(|r| r.1)
            .sum();
        let mut busiest: Vec<&(String, u64, f64)> = self
            .rows
            .iter()
            .filter(|r| !waits.contains(&r.0.as_str()))
            .collect();
        busiest.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
        let top: Vec<String> = busiest
            .iter()
            .take(6)
            .map(|r| format!("`{}` {} calls, {} ms", r.0, r.1, num(r.2 * 1e3)))
            .collect();
        let change = Stats::of(&b.change).median;
        format!(
            "One more refresh, not among the timed ones, ran with `strace -f -c -w` attached to \
             the daemon ({} ms under strace). Besides waiting (futex, epoll), the daemon made \
             {total} system calls; the most time went to: {}. It called fsync {fs_n} times ({} ms \
             under strace) — at the {} ms this disk takes per fsync, about {} ms, i.e. {}% of the {} ms an untraced \
             change takes. It made {ex_n} execve calls \
             (prepare runs `unsquashfs -cat` to read the blob's snap.yaml; each PATH entry \
             before the one holding it costs a failed execve) and started {cl_n} threads or \
             processes.",
            num(self.wall.as_secs_f64() * 1e3),
            top.join("; "),
            num(fs_s * 1e3),
            num(fsync.median),
            num(fs_n as f64 * fsync.median),
            num(100.0 * fs_n as f64 * fsync.median / change),
            num(change),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::unix_ms;

    #[test]
    fn api_times_parse() {
        assert_eq!(unix_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_ms("1970-01-02T00:00:01.5Z"), Some(86_401_500));
        assert_eq!(unix_ms("2026-11-21T22:55:47.74Z"), Some(1_795_301_747_740));
        assert_eq!(
            unix_ms("2000-03-01T00:00:00.123456Z"),
            Some(951_868_800_123)
        );
        assert_eq!(unix_ms("junk"), None);
    }
}
