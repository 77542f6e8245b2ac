//! Section 9, release agent and confine-hook: the sizes of the release agent (no_std, `--profile
//! agent`), its std twin and confine-hook (as built and stripped), and the release agent's exec
//! time against a static no-op and `/bin/true` measured in the same run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::report::{num, Figure, Section, Stats};
use crate::util::{self, Ctx};

/// The budget for the release agent's binary.
const AGENT_LIMIT: u64 = 50 * 1024;

pub fn run(ctx: &Ctx, s: &mut Section) -> anyhow::Result<()> {
    for tool in ["hyperfine", "gcc", "strip"] {
        if !util::have(tool) {
            bail!("{tool} is not installed (scripts/bench.sh installs it)");
        }
    }
    // The bench binary is TARGET/release/refreshd-bench; the agent profile builds into
    // TARGET/agent.
    let exe = std::env::current_exe().context("cannot find the bench binary's own path")?;
    let bin_dir = exe.parent().context("the bench binary has no directory")?;
    let target = bin_dir
        .parent()
        .context("the bench binary's directory has no parent")?;
    let agent = target.join("agent/refresh-release-agent");
    let agent_std = target.join("agent/refresh-release-agent-std");
    if !agent.is_file() || !agent_std.is_file() {
        build_agent(target)?;
    }
    let hook = bin_dir.join("confine-hook");
    if !hook.is_file() {
        bail!(
            "{} is missing: build the binaries first (cargo build --release --workspace --bins)",
            hook.display()
        );
    }

    let dir = ctx.work.join("sizes");
    fs::create_dir_all(&dir)?;
    let stripped = dir.join("confine-hook.stripped");
    util::run(Command::new("strip").arg("-o").arg(&stripped).arg(&hook))?;

    let size = |p: &Path| -> anyhow::Result<f64> {
        Ok(fs::metadata(p)
            .with_context(|| format!("cannot stat {}", p.display()))?
            .len() as f64)
    };
    let (a, a_std, h, h_stripped) = (
        size(&agent)?,
        size(&agent_std)?,
        size(&hook)?,
        size(&stripped)?,
    );
    s.push(
        Figure::new(
            "release agent binary (no_std, --profile agent)",
            "bytes",
            Stats::one(a),
        )
        .target("< 50 KB (51,200 bytes)", (a as u64) < AGENT_LIMIT),
    );
    s.push(
        Figure::new(
            "its std twin (same logic, std `fn main`, same profile)",
            "bytes",
            Stats::one(a_std),
        )
        .against("release agent (no_std)", Stats::one(a)),
    );
    s.push(Figure::new(
        "confine-hook binary (release build, as installed)",
        "bytes",
        Stats::one(h),
    ));
    s.push(
        Figure::new(
            "confine-hook binary, stripped",
            "bytes",
            Stats::one(h_stripped),
        )
        .against("as built", Stats::one(h)),
    );

    // Exec time: the kernel execs the agent for every emptied group of the freezer hierarchy
    // (HOME=/ and a fixed PATH; the agent reads no environment), with the group's path.
    let noop = util::static_noop(&dir)?;
    let absent = format!("/refreshd/snap.absent-{}", std::process::id());
    let rounds = ctx.n(5, 1);
    let runs = ctx.n(200, 50);
    let warmup = ctx.n(20, 5);
    println!("    exec times ({rounds} rounds of {runs} runs each)");
    let t = crate::launch::hyperfine_rounds(
        ctx,
        &[
            ("static no-op", noop.display().to_string()),
            ("/bin/true", "/bin/true".into()),
            (
                "agent, argument not ours",
                format!("{} /unrelated/path", agent.display()),
            ),
            (
                "agent, refreshd group without marker",
                format!("{} {absent}", agent.display()),
            ),
            (
                "std twin, argument not ours",
                format!("{} /unrelated/path", agent_std.display()),
            ),
        ],
        rounds,
        runs,
        warmup,
        None,
    )?;
    let t: Vec<Stats> = t.iter().map(|x| x.stats()).collect();
    let (noop_t, true_t, not_ours, no_marker, std_t) = (&t[0], &t[1], &t[2], &t[3], &t[4]);
    s.push(
        Figure::new("exec of /bin/true", "ms", true_t.clone())
            .against("static no-op", noop_t.clone()),
    );
    s.push(
        Figure::new(
            "release agent exec, argument not ours (`/unrelated/path`)",
            "ms",
            not_ours.clone(),
        )
        .against("static no-op", noop_t.clone()),
    );
    s.push(
        Figure::new(
            format!("release agent exec, `{absent}` (no marker to remove)"),
            "ms",
            no_marker.clone(),
        )
        .against("static no-op", noop_t.clone()),
    );
    s.push(
        Figure::new("std twin exec, argument not ours", "ms", std_t.clone())
            .against("release agent (no_std)", not_ours.clone()),
    );

    let runctl = Path::new(refreshd_runctl::DEFAULT_RUNCTL);
    s.note(format!(
        "Sizes are of the binaries as built: the release agent and its std twin by `cargo build \
         -p refresh-release-agent --profile agent` (opt-level z, LTO, one codegen unit, panic = \
         abort, stripped; {} and {} here), confine-hook by the release build ({}), and a copy \
         of it stripped with `strip -o`. Shared libraries needed: agent {}; std twin {}; \
         confine-hook {}.",
        agent.display(),
        agent_std.display(),
        hook.display(),
        needed(&agent),
        needed(&agent_std),
        needed(&hook),
    ));
    s.note(format!(
        "Exec times are whole processes (fork + exec + wait) timed by `hyperfine -N` in this \
         run, {rounds} rounds of {runs} runs per command (after {warmup} warm-up runs each), the \
         commands' order alternating from round to round: a static no-op (glibc, `return 0`, \
         linked `-static`), `/bin/true`, and the agent with an argument that is not a refreshd \
         group (it parses and exits) and with `{absent}` — a group of the daemon whose root is \
         `/`, whose marker does not exist, so the agent opens `{}` ({}), checks it and \
         unlinks a marker that is not there. The agent against `/bin/true`: {}× (argument not \
         ours), {}× (no marker); the std twin {}× the no_std agent.",
        runctl.display(),
        if runctl.is_dir() {
            "present here"
        } else {
            "absent here, so the agent stops at the open"
        },
        num(not_ours.median / true_t.median),
        num(no_marker.median / true_t.median),
        num(std_t.median / not_ours.median),
    ));
    let agent_libs = needed(&agent);
    if agent_libs != "none (static)" {
        s.note(format!(
            "The no_std agent is still linked dynamically (it needs {agent_libs}), so every exec \
             of it goes through ld.so, as `/bin/true`'s does: {}× the static no-op (argument not \
             ours). Its own work is a few syscalls; linked statically it would not pay ld.so's \
             start-up.",
            num(not_ours.median / noop_t.median),
        ));
    }
    Ok(())
}

/// `cargo build -p refresh-release-agent --profile agent` from the workspace holding `target`.
fn build_agent(target: &Path) -> anyhow::Result<()> {
    let workspace: PathBuf = target
        .parent()
        .context("the target directory has no parent")?
        .to_owned();
    if !workspace.join("release-agent/Cargo.toml").is_file() || !util::have("cargo") {
        bail!(
            "{}/agent/refresh-release-agent is missing and cannot be built here: run `cargo \
             build -p refresh-release-agent --profile agent` in the workspace first",
            target.display()
        );
    }
    println!(
        "    building the release agent (cargo build -p refresh-release-agent --profile agent)"
    );
    util::run(
        Command::new("cargo")
            .args([
                "build",
                "-q",
                "-p",
                "refresh-release-agent",
                "--profile",
                "agent",
            ])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(&workspace),
    )
    .context("cannot build the release agent")?;
    Ok(())
}

/// The shared libraries an ELF binary needs (`readelf -d`), or "none (static)".
fn needed(p: &Path) -> String {
    let Ok(out) = Command::new("readelf").arg("-d").arg(p).output() else {
        return "unknown (no readelf)".into();
    };
    let libs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("Shared library: [")?;
            Some(rest.trim_end_matches(']').to_owned())
        })
        .collect();
    if libs.is_empty() {
        "none (static)".into()
    } else {
        libs.join(", ")
    }
}
