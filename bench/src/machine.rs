//! The machine the figures were measured on, and its own floor: one exec of a static no-op,
//! `/bin/true`, and one move of a process into a cgroup — the costs every launch pays.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::report::{Figure, Section, Stats};
use crate::util::{self, Ctx};

/// Key facts, one row each.
pub fn describe() -> Vec<(String, String)> {
    let mut v = vec![];
    let sh = |s: &str| util::sh(s).map(|o| o.trim().to_owned()).unwrap_or_default();
    v.push(("kernel".into(), sh("uname -srm")));
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    v.push(("cpu".into(), format!("{cores} × {model}")));
    let mem = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|x| x.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    v.push((
        "memory".into(),
        format!("{:.1} GiB", total as f64 / 1048576.0),
    ));
    v.push((
        "disk under /tmp".into(),
        sh("df -hT /tmp | awk 'NR==2 {print $2\", \"$3\" total, \"$5\" free\"}'"),
    ));
    v.push((
        "cgroups".into(),
        sh("awk '{ i = 7; while ($i != \"-\") i++ } $(i+1) == \"cgroup2\" || ($(i+1) == \"cgroup\" && $(i+3) ~ /freezer/) { print $5\" (\"$(i+1)\", \"$(i+3)\")\" }' /proc/self/mountinfo | paste -sd ';' | sed 's/;/; /g'"),
    ));
    v.push(("rustc".into(), sh("rustc --version")));
    v.push(("commit".into(), sh("git rev-parse --short HEAD 2>/dev/null; git diff --quiet 2>/dev/null || echo '(with local changes)'").replace('\n', " ")));
    v
}

pub fn floor(ctx: &Ctx, s: &mut Section) -> anyhow::Result<()> {
    let noop = util::static_noop(&ctx.work)?;
    let bare = util::bare_noop(&ctx.work)?;
    let runs = ctx.n(1000, 100);
    let t = util::hyperfine(
        ctx,
        &[
            ("static no-op", noop.display().to_string()),
            ("bare no-op", bare.display().to_string()),
            ("/bin/true", "/bin/true".into()),
        ],
        runs,
        50,
        None,
    )?;
    s.push(Figure::new(
        "exec of a static no-op (fork + exec + wait)",
        "ms",
        t[0].clone(),
    ));
    s.push(
        Figure::new(
            "exec of a bare no-op (no libc: `_exit` from `_start`)",
            "ms",
            t[1].clone(),
        )
        .against("static no-op", t[0].clone()),
    );
    s.push(
        Figure::new("exec of /bin/true (dynamic, libc)", "ms", t[2].clone())
            .against("static no-op", t[0].clone()),
    );
    for (name, path) in cgroup_dirs() {
        let samples = migrations(&path, ctx.n(40, 10))?;
        s.push(
            Figure::new(
                format!("move a process into a {name} cgroup"),
                "ms",
                Stats::ms(&samples),
            )
            .against("static no-op exec", t[0].clone()),
        );
    }
    s.note(
        "The static no-op is `int main(void) { return 0; }` linked statically with glibc, timed \
         by `hyperfine -N` as a whole process (fork + exec + wait): the unit the launch overhead \
         is counted in (\"one direct exec\"). The bare no-op shows how much of that is glibc's \
         start-up. Moving a process into a cgroup \
         (a write to `cgroup.procs`, 50 ms apart as launches are) takes the kernel's \
         `cgroup_threadgroup_rwsem` for writing; unless the hierarchy was ever mounted with \
         `favordynmods`, that waits for an RCU grace period — the dominant cost of any launch that \
         joins a cgroup (see 1.).",
    );
    Ok(())
}

/// Scratch cgroups in the v1 freezer and the v2 hierarchy, whichever are mounted.
fn cgroup_dirs() -> Vec<(&'static str, std::path::PathBuf)> {
    let (v1, v2) = refreshd_tests::cgroup_mounts();
    let mut out = vec![];
    if let Some(m) = v1 {
        out.push(("v1 freezer", m));
    }
    if let Some(m) = v2 {
        out.push(("cgroup2", m));
    }
    out
}

/// Times `n` moves of a fresh child into `MOUNT/refreshd-bench.PID`, the way confine-hook joins
/// a snap's group; removes the group after.
fn migrations(mount: &std::path::Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    let dir = mount.join(format!("refreshd-bench.{}", std::process::id()));
    fs::create_dir(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let result = (|| {
        let mut v = vec![];
        for _ in 0..n {
            let mut child = Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .spawn()?;
            std::thread::sleep(Duration::from_millis(50));
            let t = Instant::now();
            let r = fs::write(dir.join("cgroup.procs"), child.id().to_string());
            v.push(t.elapsed());
            let _ = child.kill();
            let _ = child.wait();
            r.context("cannot move a process into the scratch cgroup")?;
        }
        Ok(v)
    })();
    // The children are gone: the group is empty and can go.
    let _ = fs::remove_dir(&dir);
    result
}
