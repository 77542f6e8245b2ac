//! The critical section's edges: wait-for-apps enters it, lift-inhibition leaves it
//! (docs/runctl-protocol.md).

use std::fmt::Write as _;

use anyhow::Context as _;

use super::{setup, Ctx, SnapSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::tracking::{idle_event, Kind};

/// Unix time in nanoseconds, for log lines tests line up with apps' own clocks.
pub fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Enters the critical section once no process of the snap is left: under the snap's lock
/// (which launchers hold around their join) the cgroups must be empty; then the inhibition
/// marker is written and launches wait. Otherwise parks until the tracking backend says the
/// snap went idle. Never kills anything.
pub fn wait_for_apps(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    let name = &ss.instance;
    let tr = &c.tracking;
    if phase == Phase::Undo {
        tr.lift(name)?;
        return Ok(Outcome::Done);
    }
    if tr.kind == Kind::None {
        // Launches can still be kept out; running apps cannot be seen. Never pretend.
        let at = unix_ns();
        tr.inhibit(name, t.change.id)?;
        t.log(format!(
            "the apps of {name} cannot be tracked ({}): going on without waiting; critical section entered at={at}",
            tr.reason
        ));
        return Ok(Outcome::Done);
    }
    let Some(lock) = tr.try_lock(name).context("cannot take the snap's lock")? else {
        return Ok(Outcome::Retry {
            reason: format!("a launch of {name} holds the snap's lock"),
            after: Some(std::time::Duration::from_millis(20)),
        });
    };
    let procs = tr.procs(name).context("cannot read the snap's cgroups")?;
    // The marker follows the kernel (without the release agent, nobody else removes it).
    tr.sync_running_marker(name, &procs)?;
    if procs.is_empty() {
        let at = unix_ns();
        tr.inhibit(name, t.change.id)?;
        drop(lock);
        t.log(format!(
            "no process of {name} is left; critical section entered at={at}"
        ));
        return Ok(Outcome::Done);
    }
    if ss.block_launches && !tr.is_inhibited(name) {
        tr.inhibit(name, t.change.id)?;
        t.log("refresh-pending-behavior is block: new launches wait while running apps drain");
    }
    drop(lock);
    let until = (tr.kind == Kind::V1Poll)
        .then(|| refreshd_state::now_ms() + tr.poll_interval.as_millis() as i64);
    Ok(Outcome::Wait {
        event: Some(idle_event(name)),
        until,
        reason: format!(
            "waiting for {} to exit: {}",
            plural(procs.len()),
            describe(&procs)
        ),
    })
}

/// Leaves the critical section: the new revision is linked, launches may go on.
pub fn lift_inhibition(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    if phase == Phase::Do {
        let at = unix_ns();
        c.tracking.lift(&ss.instance)?;
        t.log(format!("critical section left at={at}"));
    }
    Ok(Outcome::Done)
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 process".to_owned()
    } else {
        format!("{n} processes")
    }
}

/// `pid 42 (user alice): sleep 100; ...` for the first few processes.
fn describe(procs: &[u32]) -> String {
    let mut out = String::new();
    for (i, pid) in procs.iter().take(5).enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let user = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|u| u.split_whitespace().next()?.parse::<u32>().ok())
            })
            .map(|uid| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| uid.to_string())
            })
            .unwrap_or_else(|| "?".to_owned());
        let cmd: String = cmd.chars().take(80).collect();
        let _ = write!(out, "pid {pid} (user {user}): {cmd}");
    }
    if procs.len() > 5 {
        let _ = write!(out, "; and {} more", procs.len() - 5);
    }
    out
}
