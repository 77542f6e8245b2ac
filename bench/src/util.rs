//! What every section needs: the run's options, whole-process timing with hyperfine, a static
//! no-op binary, cache dropping, and command helpers with errors that say what failed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context as _};

use crate::report::Stats;

/// Options of the run, shared by every section.
pub struct Ctx {
    /// Fewer repetitions and smaller data sets: a smoke run, not a measurement to publish.
    pub quick: bool,
    /// Scratch space for this run (removed at the end).
    pub work: PathBuf,
}

impl Ctx {
    /// `full` normally, `quick` in a smoke run.
    pub fn n(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Runs a command to completion; an error names the command and shows its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `sh -c SCRIPT`, checked.
pub fn sh(script: &str) -> anyhow::Result<String> {
    let out = run(Command::new("sh").arg("-c").arg(script))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Times whole commands with `hyperfine -N` (no shell: fork + exec + wait of each command):
/// each command's runs are consecutive, after `warmup` unrecorded runs. Returns each command's
/// wall times in milliseconds. `user` runs hyperfine itself (and so every command) as that
/// uid/gid with no supplementary groups.
pub fn hyperfine(
    ctx: &Ctx,
    commands: &[(&str, String)],
    runs: usize,
    warmup: usize,
    user: Option<(u32, u32)>,
) -> anyhow::Result<Vec<Stats>> {
    Ok(hyperfine_times(ctx, commands, runs, warmup, user)?
        .iter()
        .map(|t| Stats::of(t))
        .collect())
}

/// [`hyperfine`], returning every run's wall time (ms) of each command, in command order.
pub fn hyperfine_times(
    ctx: &Ctx,
    commands: &[(&str, String)],
    runs: usize,
    warmup: usize,
    user: Option<(u32, u32)>,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let dir = tempfile::Builder::new()
        .prefix("hyperfine-")
        .tempdir_in(&ctx.work)?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
    }
    let json = dir.path().join("out.json");
    let mut cmd = match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg("hyperfine");
            c
        }
        None => Command::new("hyperfine"),
    };
    cmd.args(["-N", "--style", "none", "--runs"])
        .arg(runs.to_string())
        .arg("--warmup")
        .arg(warmup.to_string())
        .arg("--export-json")
        .arg(&json)
        .current_dir(dir.path());
    for (name, command) in commands {
        cmd.arg("-n").arg(name).arg(command);
    }
    run(&mut cmd)?;
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&json)?)?;
    let results = v["results"]
        .as_array()
        .context("hyperfine wrote no results")?;
    if results.len() != commands.len() {
        bail!(
            "hyperfine wrote {} results for {} commands",
            results.len(),
            commands.len()
        );
    }
    let mut out = vec![];
    for r in results {
        let times: Vec<f64> = r["times"]
            .as_array()
            .context("hyperfine wrote no times")?
            .iter()
            .filter_map(|t| t.as_f64())
            .map(|s| s * 1e3)
            .collect();
        out.push(times);
    }
    Ok(out)
}

/// A static no-op (glibc, `int main(void) { return 0; }`, linked with `-static`): the app of the
/// launch benchmark, and the unit launch overhead is counted in ("one direct exec").
pub fn static_noop(dir: &Path) -> anyhow::Result<PathBuf> {
    compile(
        dir,
        "noop",
        "int main(void) { return 0; }\n",
        &["-static", "-O2"],
    )
}

/// The cheapest exec there is: `_exit(0)` as the first instruction (no libc, no start-up).
pub fn bare_noop(dir: &Path) -> anyhow::Result<PathBuf> {
    compile(
        dir,
        "bare-noop",
        "void _start(void) { __asm__ volatile(\"mov $60, %eax\\n xor %edi, %edi\\n syscall\"); }\n",
        &["-static", "-nostdlib", "-O2"],
    )
}

fn compile(dir: &Path, name: &str, source: &str, flags: &[&str]) -> anyhow::Result<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    fs::write(&src, source)?;
    run(Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src))?;
    Ok(bin)
}

/// Empties the page cache, dentries and inodes (so a copy reads from the disk, not memory).
pub fn drop_caches() -> anyhow::Result<()> {
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").context("cannot drop caches (needs root)")
}

/// Resident set size of a process, in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> anyhow::Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}
