//! Section 10, launches in the real regime. People start apps seconds apart, not in a tight
//! loop, and a process's move into a cgroup then waits for an RCU grace period that a move a few
//! ms earlier would have paid for it (unless the hierarchy runs with `favordynmods`). Launches
//! are timed 100 ms apart, and back to back for comparison, in two worlds: this host (the hybrid
//! world: v1 freezer and cgroup2, systemd not PID 1) and a throwaway systemd booted as PID 1 with
//! refreshd installed by `make install` and a logged-in user ([`crate::sdworld`]). Baselines are
//! timed in the same passes: the direct exec of the no-op, the floor (a setuid helper that moves
//! itself into the hierarchies a launch joins, then execs the no-op), and, in the systemd world,
//! `systemd-run --user --scope` of the no-op. The timing loop is this binary re-executed as the
//! user with [`TIMER`], in both worlds, so that their figures compare.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use refreshd_tests::{ctl, text, Daemon, Root, SnapSrc, TestUser};
use serde::{Deserialize, Serialize};

use crate::report::{num, Figure, Section, Stats};
use crate::util::{self, Ctx};

/// The first argument that makes this binary the timing loop (`TIMER PLAN.json OUT.json`).
pub const TIMER: &str = "__time-launches";
/// The snap: `noop` runs the static no-op, `noop.where` prints the cgroups it was started in.
pub const SNAP: &str = "noop";
/// Between a launch's end and the next launch's start, in the spaced passes.
const GAP_MS: u64 = 100;
/// The goal: a spaced launch costs at most the floor plus this many direct execs.
pub const GOAL: f64 = 3.0;

/// Where each command is in a plan (and in its times).
pub const DIRECT: usize = 0;
pub const FLOOR: usize = 1;
pub const LAUNCH: usize = 2;
pub const SYSTEMD_RUN: usize = 3;

/// What the timer runs, written as JSON for it.
#[derive(Serialize, Deserialize)]
pub struct Plan {
    pub gap_ms: u64,
    pub spaced_runs: usize,
    pub spaced_warmup: usize,
    pub rounds: usize,
    pub runs: usize,
    pub warmup: usize,
    pub commands: Vec<Cmd>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct Cmd {
    pub name: String,
    pub argv: Vec<String>,
    /// Left out (with the reason) rather than failing the run when its first run fails.
    pub optional: bool,
}

impl Cmd {
    pub fn new(name: &str, argv: &[&str]) -> Cmd {
        Cmd {
            name: name.to_owned(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            optional: false,
        }
    }
}

/// What the timer measured, per command in plan order (ms).
#[derive(Serialize, Deserialize, Default)]
pub struct Times {
    pub spaced: Vec<Vec<f64>>,
    pub b2b: Vec<Vec<f64>>,
    /// Optional commands left out, with why.
    pub skipped: Vec<(String, String)>,
}

impl Plan {
    /// The run's sizes: a smoke run is a few seconds per world.
    pub fn sized(ctx: &Ctx, commands: Vec<Cmd>) -> Plan {
        Plan {
            gap_ms: GAP_MS,
            spaced_runs: ctx.n(100, 8),
            spaced_warmup: ctx.n(5, 1),
            rounds: ctx.n(4, 1),
            runs: ctx.n(50, 10),
            warmup: ctx.n(5, 2),
            commands,
        }
    }
}

/// `refreshd-bench __time-launches PLAN.json OUT.json`: runs the plan, writes the times.
pub fn timer_main(args: &[String]) -> ExitCode {
    let [plan, out] = args else {
        eprintln!("usage: refreshd-bench {TIMER} PLAN.json OUT.json");
        return ExitCode::from(2);
    };
    let r = fs::read(plan)
        .with_context(|| format!("cannot read the plan {plan}"))
        .and_then(|b| serde_json::from_slice::<Plan>(&b).context("unreadable plan"))
        .and_then(|p| time_launches(&p))
        .and_then(|t| {
            fs::write(out, serde_json::to_vec(&t)?).with_context(|| format!("cannot write {out}"))
        });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refreshd-bench {TIMER}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn quiet(c: &Cmd) -> Command {
    let mut cmd = Command::new(&c.argv[0]);
    cmd.args(&c.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// One whole process, fork to wait, in ms; a failure is an error.
fn once(cmd: &mut Command, c: &Cmd) -> anyhow::Result<f64> {
    let t = Instant::now();
    let st = cmd
        .spawn()
        .and_then(|mut ch| ch.wait())
        .with_context(|| format!("cannot run {}", c.name))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !st.success() {
        bail!(
            "{} (`{}`) failed ({st}) while timed",
            c.name,
            c.argv.join(" ")
        );
    }
    Ok(ms)
}

fn time_launches(plan: &Plan) -> anyhow::Result<Times> {
    let n = plan.commands.len();
    let mut t = Times {
        spaced: vec![vec![]; n],
        b2b: vec![vec![]; n],
        skipped: vec![],
    };
    let mut cmds: Vec<Option<Command>> = vec![];
    for c in &plan.commands {
        // A first, untimed run whose stderr says what is wrong if it fails.
        let why = match Command::new(&c.argv[0])
            .args(&c.argv[1..])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!("{} ({})", text(&o.stderr).trim(), o.status)),
            Err(e) => Some(format!("cannot run it: {e}")),
        };
        match why {
            None => cmds.push(Some(quiet(c))),
            Some(w) if c.optional => {
                t.skipped.push((c.name.clone(), w));
                cmds.push(None);
            }
            Some(w) => bail!("{} (`{}`) failed: {w}", c.name, c.argv.join(" ")),
        }
    }
    let live: Vec<usize> = (0..n).filter(|&i| cmds[i].is_some()).collect();
    let gap = Duration::from_millis(plan.gap_ms);
    // Spaced: each launch starts `gap` after the previous one, whatever its command, ended:
    // the sleep is the workload's spacing. The order rotates from pass to pass.
    for pass in 0..plan.spaced_warmup + plan.spaced_runs {
        for k in 0..live.len() {
            let i = live[(pass + k) % live.len()];
            std::thread::sleep(gap);
            let cmd = cmds[i].as_mut().expect("live");
            let ms = once(cmd, &plan.commands[i])?;
            if pass >= plan.spaced_warmup {
                t.spaced[i].push(ms);
            }
        }
    }
    // Back to back: each command's runs one right after the other (after unrecorded warm-up
    // runs), the order of the commands reversed from round to round.
    for round in 0..plan.rounds {
        let mut order = live.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let cmd = cmds[i].as_mut().expect("live");
            for r in 0..plan.warmup + plan.runs {
                let ms = once(cmd, &plan.commands[i])?;
                if r >= plan.warmup {
                    t.b2b[i].push(ms);
                }
            }
        }
    }
    Ok(t)
}

/// One world's measurements, for the report.
pub struct World {
    /// "hybrid world", "systemd world".
    pub name: &'static str,
    pub times: Times,
    /// The hierarchies the floor's helper joins, for the figure's name.
    pub floor_joins: String,
    /// The `/proc/self/cgroup` of an app started by the launcher, as the user.
    pub launched_in: String,
    /// Why a baseline is missing here, if one is by design.
    pub absent: Option<(&'static str, &'static str)>,
}

/// Scratch cgroups for the floor (one per hierarchy), removed on drop.
pub struct Scratch {
    /// (host path, path as the helper sees it).
    pub groups: Vec<(PathBuf, String)>,
}

impl Scratch {
    /// `MOUNT/refreshd-bench-floor-PID-N` under each `(host mount, mount as seen where the
    /// helper runs)`.
    pub fn new(mounts: &[(PathBuf, String)]) -> anyhow::Result<Scratch> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "refreshd-bench-floor-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut s = Scratch { groups: vec![] };
        for (host, seen) in mounts {
            let dir = host.join(&name);
            fs::create_dir(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
            s.groups.push((dir, format!("{seen}/{name}")));
        }
        Ok(s)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for (dir, _) in &self.groups {
            // The no-ops that joined have exited; their zombies may take a moment to go.
            let until = Instant::now() + Duration::from_secs(2);
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if dir.exists() {
                eprintln!(
                    "refreshd-bench: cannot remove the scratch cgroup {}",
                    dir.display()
                );
            }
        }
    }
}

/// Compiles the floor's helper: a static C program that writes its pid into each group's
/// `cgroup.procs`, drops to its real uid and gid, and execs `noop`. Run setuid root, like
/// confine-hook. The paths are compiled in: the helper takes no input.
pub fn floor_helper(dir: &Path, groups: &[String], noop: &str) -> anyhow::Result<PathBuf> {
    let lit = |p: &str| -> anyhow::Result<String> {
        if p.contains(['"', '\\', '\n', '?']) {
            bail!("{p}: a path the helper cannot hold");
        }
        Ok(format!("\"{p}\""))
    };
    let mut list = String::new();
    for g in groups {
        let _ = write!(list, "{}, ", lit(&format!("{g}/cgroup.procs"))?);
    }
    let src = format!(
        r#"#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
static const char *const GROUPS[] = {{ {list}0 }};
static const char NOOP[] = {noop};
int main(void) {{
    char pid[24];
    int n = snprintf(pid, sizeof pid, "%d", (int)getpid());
    for (int i = 0; GROUPS[i]; i++) {{
        int fd = open(GROUPS[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, pid, n) != n) {{ perror(GROUPS[i]); return 126; }}
        close(fd);
    }}
    if (setgid(getgid()) != 0 || setuid(getuid()) != 0) {{
        perror("dropping privileges");
        return 126;
    }}
    char *argv[] = {{ (char *)NOOP, 0 }};
    execv(NOOP, argv);
    perror(NOOP);
    return 127;
}}
"#,
        noop = lit(noop)?
    );
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("floor-{}", N.fetch_add(1, Ordering::SeqCst));
    let c = dir.join(format!("{name}.c"));
    let bin = dir.join(&name);
    fs::write(&c, src)?;
    util::run(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&c),
    )?;
    Ok(bin)
}

/// This binary, for the user to run as the timer: a hard link into `dir` (or a copy), 0755.
pub fn timer_binary(dest: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the bench binary's own path")?;
    let _ = fs::remove_file(dest);
    if fs::hard_link(&exe, dest).is_err() {
        fs::copy(&exe, dest).with_context(|| format!("cannot copy {}", exe.display()))?;
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The no-op snap: `noop` execs the static no-op, `noop.where` prints its cgroups.
pub fn build_snap(noop: &Path, out: &Path) -> anyhow::Result<()> {
    let src = SnapSrc::new(&format!(
        "name: {SNAP}\nversion: '1.0'\nsummary: A static no-op (spaced launches)\napps:\n  \
         {SNAP}:\n    command: bin/noop\n  where:\n    command: bin/where\n"
    ))
    .file(
        "bin/where",
        "#!/bin/sh\nexec cat /proc/self/cgroup\n",
        0o755,
    );
    fs::copy(noop, src.dir.path().join("bin/noop"))?;
    fs::set_permissions(
        src.dir.path().join("bin/noop"),
        fs::Permissions::from_mode(0o755),
    )?;
    src.build(out);
    Ok(())
}

pub fn run(ctx: &Ctx, s: &mut Section) -> anyhow::Result<()> {
    for tool in ["mksquashfs", "gcc", "setpriv"] {
        if !util::have(tool) {
            bail!("{tool} is not installed (scripts/bench.sh installs it)");
        }
    }
    let dir = ctx.work.join("spaced");
    fs::create_dir_all(&dir)?;
    let noop = util::static_noop(&dir)?;
    let snap = dir.join("noop.snap");
    build_snap(&noop, &snap)?;
    s.note(format!(
        "Every launch starts {GAP_MS} ms after the previous one ended (**spaced**), as launches \
         by people are, or right after it (**back to back**, as in section 1). In each world \
         the same timing loop — this binary, run as an unprivileged user — times whole \
         processes (spawn to wait), passing from command to command so that every baseline is \
         timed in the same passes: the **direct exec** of the static no-op from the snap's \
         mount; the **floor**, a static setuid-root helper that writes its pid into a scratch \
         cgroup's `cgroup.procs` in each hierarchy a launch joins, drops to the user and execs \
         the same no-op — the least any tracked launch can cost; the **launch** through \
         `snap/bin/{SNAP}` (confine-hook) with refreshd running; and, where systemd is PID 1, \
         `systemd-run --user --scope` of the no-op, what systemd itself charges for putting a \
         process in a unit of its own. Goal: a spaced launch costs at most the floor plus \
         {GOAL} direct execs (medians; the direct exec counted back to back, as in section 1: \
         spaced, even it costs more, the CPUs being idle between launches). Back to back, a \
         move finds the grace period already paid by the previous one, so the floor drops by \
         most of its cost; spaced, every move pays it."
    ));

    let load_before = loadavg();
    println!("    hybrid world: this host, {SNAP} installed in a scratch root");
    let hybrid = hybrid_world(ctx, &dir, &snap)?;
    push_world(s, &hybrid);

    let mut worlds = vec![hybrid];
    match refreshd_tests::systemd::can_run() {
        Ok(()) => {
            println!(
                "    systemd world: systemd booted as PID 1, refreshd installed by `make install`"
            );
            let sd = crate::sdworld::measure(ctx, &dir, &snap)?;
            push_world(s, &sd);
            worlds.push(sd);
        }
        // As the tests skip what this machine cannot run: said, not failed.
        Err(why) => {
            println!("    systemd world: not measured: {why}");
            s.note(format!(
                "**systemd world**: not measured on this machine: {why}."
            ));
        }
    }
    s.note(summary(&worlds));
    // Other work on the machine shows in every figure here (a busy CPU delays each spawn; other
    // cgroup moves pay grace periods for ours): the load says how quiet it was.
    s.note(format!(
        "Load average (1, 5, 15 min) before the section: {load_before}; after it: {}.",
        loadavg()
    ));
    Ok(())
}

/// `/proc/loadavg`'s three averages.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

/// This host: a scratch root with refreshd running, a test user, the floor joining the freezer
/// and cgroup2 hierarchies (whichever are mounted, as confine-hook does).
fn hybrid_world(ctx: &Ctx, dir: &Path, snap: &Path) -> anyhow::Result<World> {
    let root = Root::new("bench-spaced");
    let r = root.path();
    let _daemon = Daemon::start(r);
    let out = ctl(
        r,
        &["install", snap.to_str().context("non-UTF-8 scratch path")?],
    );
    if !out.status.success() {
        bail!("refreshctl install failed: {}", text(&out.stderr).trim());
    }
    let launcher = r.join("snap/bin").join(SNAP);
    let direct = r.join("snap").join(SNAP).join("current/bin/noop");
    let user = TestUser::create("sp").context("useradd failed: cannot make the test user")?;
    let home = nix::unistd::User::from_name(&user.name)?
        .context("the test user has no passwd entry")?
        .dir;
    let home = r.join(home.strip_prefix("/").unwrap_or(&home));
    fs::create_dir_all(&home)?;
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid))?;

    let (v1, v2) = refreshd_tests::cgroup_mounts();
    let mounts: Vec<(PathBuf, String)> = [v1, v2]
        .into_iter()
        .flatten()
        .map(|m| (m.clone(), m.display().to_string()))
        .collect();
    if mounts.is_empty() {
        bail!("no cgroup hierarchy is mounted: there is no move to time");
    }
    let scratch = Scratch::new(&mounts)?;
    let seen: Vec<String> = scratch.groups.iter().map(|g| g.1.clone()).collect();
    let helper = floor_helper(dir, &seen, &direct.display().to_string())?;

    // The user's files, beside the root (which the user can reach).
    let files = root.aux("spaced");
    fs::create_dir(&files)?;
    fs::set_permissions(&files, fs::Permissions::from_mode(0o755))?;
    let floor = files.join("floor");
    fs::copy(&helper, &floor)?;
    std::os::unix::fs::chown(&floor, Some(0), Some(user.gid))?;
    fs::set_permissions(&floor, fs::Permissions::from_mode(0o4750))?;
    let timer = files.join("timer");
    timer_binary(&timer)?;
    let out_dir = files.join("out");
    fs::create_dir(&out_dir)?;
    std::os::unix::fs::chown(&out_dir, Some(user.uid), Some(user.gid))?;

    let as_user = |program: &Path| {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        c
    };
    let launched_in = text(
        &util::run(&mut as_user(
            &r.join("snap/bin").join(format!("{SNAP}.where")),
        ))
        .context("the launcher does not start an app for an unprivileged user")?
        .stdout,
    );

    let d = direct.display().to_string();
    let plan = Plan::sized(
        ctx,
        vec![
            Cmd::new("direct", &[&d]),
            Cmd::new("floor", &[&floor.display().to_string()]),
            Cmd::new("launch", &[&launcher.display().to_string()]),
        ],
    );
    let plan_path = files.join("plan.json");
    fs::write(&plan_path, serde_json::to_vec(&plan)?)?;
    let times_path = out_dir.join("times.json");
    util::run(as_user(&timer).arg(TIMER).arg(&plan_path).arg(&times_path))
        .context("the timing loop failed")?;
    let times: Times = serde_json::from_slice(&fs::read(&times_path)?)?;
    drop(scratch);
    Ok(World {
        name: "hybrid world",
        times,
        floor_joins: joins(&mounts.iter().map(|m| m.1.clone()).collect::<Vec<_>>()),
        launched_in,
        absent: Some(("systemd-run --user --scope", "n/a: no systemd as PID 1")),
    })
}

/// "the v1 freezer and cgroup2", from mount points.
pub fn joins(mounts: &[String]) -> String {
    let name = |m: &String| {
        if m.contains("freezer") {
            "the v1 freezer"
        } else {
            "cgroup2"
        }
    };
    match mounts {
        [a] => name(a).to_owned(),
        [a, b] => format!("{} and {}", name(a), name(b)),
        _ => format!("{} hierarchies", mounts.len()),
    }
}

fn stats(v: &[f64]) -> Option<Stats> {
    (!v.is_empty()).then(|| Stats::of(v))
}

/// One world's figures. Overheads are counted in direct execs as section 1 counts them: the
/// back-to-back direct exec's median. (Spaced, even the direct exec costs more: the CPUs idle
/// between launches, and waking them is part of every spaced figure.)
fn push_world(s: &mut Section, w: &World) {
    let wn = w.name;
    let Some(unit) = stats(&w.times.b2b[DIRECT]) else {
        return;
    };
    for spaced in [true, false] {
        let (how, v) = if spaced {
            (format!("spaced {GAP_MS} ms"), &w.times.spaced)
        } else {
            ("back to back".to_owned(), &w.times.b2b)
        };
        let (Some(d), Some(f), Some(l)) = (stats(&v[DIRECT]), stats(&v[FLOOR]), stats(&v[LAUNCH]))
        else {
            continue;
        };
        let mut direct = Figure::new(
            format!("{wn}, {how}: direct exec of the no-op"),
            "ms",
            d.clone(),
        );
        if spaced {
            direct = direct.against("direct exec, back to back", unit.clone());
        }
        s.push(direct);
        s.push(
            Figure::new(
                format!(
                    "{wn}, {how}: floor (setuid helper: joins {}, execs the no-op)",
                    w.floor_joins
                ),
                "ms",
                f.clone(),
            )
            .against("direct exec", d.clone()),
        );
        s.push(
            Figure::new(
                format!("{wn}, {how}: launch through snap/bin/{SNAP} as a user, refreshd running"),
                "ms",
                l.clone(),
            )
            .against("floor", f.clone()),
        );
        if let Some(sr) = v.get(SYSTEMD_RUN).and_then(|x| stats(x)) {
            s.push(
                Figure::new(
                    format!("{wn}, {how}: systemd-run --user --scope of the no-op"),
                    "ms",
                    sr,
                )
                .against("floor", f.clone()),
            );
        }
        let over = (l.median - f.median) / unit.median;
        let over90 = (l.p90 - f.p90) / unit.median;
        let mut fig = Figure::new(
            format!("{wn}, {how}: launch − floor"),
            "direct execs",
            Stats::one(over),
        )
        .note(format!(
            "medians: ({} − {}) / {} ms (the direct exec back to back); with the p90s of the \
             launch and the floor: {} direct execs",
            num(l.median),
            num(f.median),
            num(unit.median),
            num(over90)
        ));
        if spaced {
            let met = over <= GOAL;
            println!(
                "    goal, {wn}: spaced launch ≤ floor + {GOAL} direct execs: {} (launch {} ms, \
                 floor {} ms, direct exec {} ms: floor + {GOAL} direct execs = {} ms)",
                if met { "met" } else { "MISSED" },
                num(l.median),
                num(f.median),
                num(unit.median),
                num(f.median + GOAL * unit.median)
            );
            fig = fig.target(format!("≤ {GOAL}"), met);
        }
        s.push(fig);
    }
    if let Some((what, why)) = w.absent {
        println!("    {wn}: {what}: {why}");
    }
}

/// The section's closing note: what each world's launch joined, what is missing and why.
fn summary(worlds: &[World]) -> String {
    let mut m = String::new();
    for w in worlds {
        let line = w
            .launched_in
            .lines()
            // cgroup2's line, and the freezer's where the launch joined one (a hierarchy not
            // mounted where the app runs still shows, at its root).
            .filter(|l| l.starts_with("0::") || (l.contains(":freezer:") && !l.ends_with(":/")))
            .map(|l| format!("`{}`", l.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            m,
            "**{}**: an app started through the launcher runs in {}",
            w.name,
            if line.is_empty() {
                "(unknown)".into()
            } else {
                line
            }
        );
        if let Some((what, why)) = w.absent {
            let _ = write!(m, "; `{what}`: {why}");
        }
        for (name, why) in &w.times.skipped {
            let _ = write!(m, "; {name} left out: {why}");
        }
        if let (Some(l), Some(sr)) = (
            stats(&w.times.spaced[LAUNCH]),
            w.times.spaced.get(SYSTEMD_RUN).and_then(|v| stats(v)),
        ) {
            let b = (
                stats(&w.times.b2b[LAUNCH]),
                w.times.b2b.get(SYSTEMD_RUN).and_then(|v| stats(v)),
            );
            let _ = write!(
                m,
                "; the launch costs {}× `systemd-run --user --scope` spaced",
                num(l.median / sr.median)
            );
            if let (Some(lb), Some(sb)) = b {
                let _ = write!(m, " and {}× back to back", num(lb.median / sb.median));
            }
        }
        m.push_str(". ");
    }
    m.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(commands: Vec<Cmd>) -> Plan {
        Plan {
            gap_ms: 1,
            spaced_runs: 3,
            spaced_warmup: 1,
            rounds: 2,
            runs: 2,
            warmup: 1,
            commands,
        }
    }

    #[test]
    fn the_timer_times_every_command_and_leaves_out_a_failing_optional_one() {
        let failing = Cmd {
            optional: true,
            ..Cmd::new("false", &["/bin/false"])
        };
        let t = time_launches(&plan(vec![Cmd::new("true", &["/bin/true"]), failing])).unwrap();
        assert_eq!(t.spaced[0].len(), 3);
        assert_eq!(t.b2b[0].len(), 4);
        assert!(t.spaced[0].iter().chain(&t.b2b[0]).all(|&ms| ms > 0.0));
        assert!(t.spaced[1].is_empty() && t.b2b[1].is_empty());
        assert_eq!(t.skipped.len(), 1);
        assert_eq!(t.skipped[0].0, "false");
    }

    #[test]
    fn a_failing_command_that_is_not_optional_fails_the_timer() {
        let e = time_launches(&plan(vec![Cmd::new("false", &["/bin/false"])]))
            .err()
            .expect("an error");
        assert!(
            format!("{e:#}").contains("false (`/bin/false`) failed"),
            "{e:#}"
        );
    }

    #[test]
    fn the_floor_is_named_by_the_hierarchies_it_joins() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            joins(&m(&["/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified"])),
            "the v1 freezer and cgroup2"
        );
        assert_eq!(joins(&m(&["/sys/fs/cgroup"])), "cgroup2");
    }
}
