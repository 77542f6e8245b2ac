//! The critical section's edges: wait-for-apps enters it, lift-inhibition leaves it
//! (docs/runctl-protocol.md).

use std::fmt::Write as _;

use anyhow::Context as _;
use refreshd_snap::text::printable;

use super::{setup, Ctx, SnapSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::kinds::ChangeKind;
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
    let entry = Entry::of(t)?;
    let name = entry.instance();
    let tr = &c.tracking;
    if phase == Phase::Undo {
        tr.lift(name)?;
        c.shutdown_delay.release(name);
        return Ok(Outcome::Done);
    }
    if tr.kind == Kind::None {
        // Tracking turned off (`--tracking none`): launches can still be kept out; running
        // apps cannot be seen. Never pretend.
        entry.verify(c)?;
        let at = unix_ns();
        tr.inhibit(name, t.change.id)?;
        c.shutdown_delay.hold(name);
        t.log(format!(
            "the apps of {name} cannot be tracked ({}): going on without waiting; critical section entered at={at}",
            tr.reason
        ));
        return Ok(Outcome::Done);
    }
    // Hashed again when the snap looks idle, before the lock (launches are not held up by it):
    // once per entry, not at every wake of a long wait.
    // A failed task is not undone: an inhibition this change wrote (refresh-pending-behavior
    // block, or just now) goes with the error.
    let verify = || {
        entry.verify(c).or_else(|e| {
            if tr.inhibition_owner(name) == Some(t.change.id) {
                tr.lift(name)?;
            }
            Err(e)
        })
    };
    let verified = tr.procs(name).is_ok_and(|p| p.is_empty());
    if verified {
        verify()?;
    }
    let Some(lock) = tr.try_lock(name).context("cannot take the snap's lock")? else {
        return Ok(lock_busy(name, t.task.retry_count));
    };
    match check_empty(c, t, name)? {
        Empty::Yes(at) => {
            drop(lock);
            if !verified {
                // Went idle between the two looks.
                verify()?;
            }
            c.shutdown_delay.hold(name);
            t.log(format!(
                "no process of {name} is left; critical section entered at={at}"
            ));
            Ok(Outcome::Done)
        }
        Empty::No(procs) => {
            let Entry::Switch(ss) = &entry else {
                // A remove or a restore just waits: no hook or notice speaks of it.
                drop(lock);
                return Ok(wait_for(c, name, &procs));
            };
            if ss.block_launches && !tr.is_inhibited(name) {
                tr.inhibit(name, t.change.id)?;
                t.log(
                    "refresh-pending-behavior is block: new launches wait while running apps drain",
                );
            }
            drop(lock);
            // The refresh is pending: the app may prepare and exit (bounded; never fatal).
            super::hooks::refresh_pending(c, t, ss)?;
            // Logged-in users hear of it once (and with a reminder policy, again later).
            let out = wait_for(c, name, &procs);
            Ok(super::notices::pending(c, t, ss, procs.len(), out))
        }
    }
}

/// What a change that enters the critical section is about.
enum Entry {
    /// An install, refresh or revert: a revision is switched to.
    Switch(Box<SnapSetup>),
    /// A remove or a restore: the snap's data is moved, no revision is switched to.
    Data(String),
}

impl Entry {
    fn of(t: &TaskCtx) -> anyhow::Result<Entry> {
        #[derive(serde::Deserialize)]
        struct Instance {
            instance: String,
        }
        Ok(match ChangeKind::parse(&t.change.kind) {
            Some(ChangeKind::Remove | ChangeKind::Restore) => {
                Entry::Data(setup::<Instance>(t)?.instance)
            }
            _ => Entry::Switch(Box::new(setup(t)?)),
        })
    }

    fn instance(&self) -> &str {
        match self {
            Entry::Switch(ss) => &ss.instance,
            Entry::Data(name) => name,
        }
    }

    /// The revision switched to is what its blob was when it came.
    fn verify(&self, c: &Ctx) -> anyhow::Result<()> {
        match self {
            Entry::Switch(ss) => verify_blob(c, ss),
            Entry::Data(_) => Ok(()),
        }
    }
}

/// The blob was verified when it came; a wait may be long, and it is on disk all that time. It
/// is hashed again before the critical section is entered (outside it: launches still run), so
/// a blob changed, truncated or corrupted since is never switched to.
fn verify_blob(c: &Ctx, ss: &SnapSetup) -> anyhow::Result<()> {
    let blob = c.layout.blob(&ss.instance, &ss.revision);
    let (hash, size) = crate::blob::sha3_file(&blob)
        .with_context(|| format!("cannot read {} to verify it again", blob.display()))?;
    if hash != ss.sha3_384 || size != ss.size {
        anyhow::bail!(
            "{} changed on disk since it was verified (sha3-384 or size differ: {size} bytes, {} expected); the refresh is undone: refresh again to fetch it afresh",
            blob.display(),
            ss.size
        );
    }
    Ok(())
}

/// Under the snap's lock: arms the running marker (so the release agent has something to
/// remove if the last process exits from now on), then reads the kernel's truth. When no
/// process is left, the marker goes, the inhibition is written, and the critical section is
/// entered.
fn check_empty(c: &Ctx, t: &TaskCtx, name: &str) -> anyhow::Result<Empty> {
    let tr = &c.tracking;
    tr.arm(name)?;
    let procs = tr.procs(name).context("cannot read the snap's cgroups")?;
    if !procs.is_empty() {
        return Ok(Empty::No(procs));
    }
    let at = unix_ns();
    tr.disarm(name)?;
    if tr.inhibition_owner(name) != Some(t.change.id) {
        tr.inhibit(name, t.change.id)?;
    }
    Ok(Empty::Yes(at))
}

enum Empty {
    /// Empty at this time (unix ns): the critical section is entered.
    Yes(u128),
    No(Vec<u32>),
}

/// A launcher holds the lock for microseconds, but one its user stopped (SIGSTOP) holds it until
/// resumed or killed: the retries back off (20 ms doubling to 5 s), so a user cannot make every
/// refresh of the snap write the state and the log 50 times a second.
fn lock_busy(name: &str, retries: u32) -> Outcome {
    let delay = std::time::Duration::from_millis(20u64 << retries.min(8));
    Outcome::Retry {
        reason: format!("a launch of {name} holds the snap's lock"),
        after: Some(delay.min(std::time::Duration::from_secs(5))),
    }
}

/// Parks until the snap goes idle: on the event of the tracking backend alone (whose backstop
/// is one shared timer, `tracking::BACKSTOP`), or for `v1-poll` until the next poll.
fn wait_for(c: &Ctx, name: &str, procs: &[u32]) -> Outcome {
    let tr = &c.tracking;
    // No deadline of its own: a timer per waiting refresh would wake an idle daemon once a
    // minute per refresh (docs/performance.md, the idle daemon).
    let until = tr
        .poll_every()
        .map(|every| refreshd_state::now_ms() + every.as_millis() as i64);
    tr.parked.notify_one();
    Outcome::Wait {
        event: Some(idle_event(name)),
        until,
        reason: format!(
            "waiting for {} to exit: {}",
            plural(procs.len()),
            describe(procs)
        ),
    }
}

/// Every task inside a refresh's critical section starts by re-entering it (rule R7 of
/// docs/runctl-protocol.md). While this change's inhibition marker stands, no launch can have
/// joined since the section was entered (launchers look for it before they join), so the task
/// goes on without the lock — which a user's stopped launcher may hold. Once the marker is
/// gone (a reboot emptied /run, or it was removed by hand), apps may have started: under the
/// lock, an empty snap is entered again; otherwise the task waits for its apps, with the marker
/// restored only under `refresh-pending-behavior: block` (as when the refresh began), so no
/// launch of anyone waits on a marker the daemon cannot get past. `None`: go on.
pub fn reenter_switch(
    c: &Ctx,
    t: &TaskCtx,
    ss: &SnapSetup,
    phase: Phase,
) -> anyhow::Result<Option<Outcome>> {
    if ss.previous.is_none() {
        // A first install: nothing of the snap can run, there is no critical section.
        return Ok(None);
    }
    reenter(c, t, &ss.instance, ss.block_launches, phase)
}

/// [`reenter_switch`] for any change inside `name`'s critical section; `block`: the marker is
/// restored while apps drain (`refresh-pending-behavior: block`).
pub fn reenter(
    c: &Ctx,
    t: &TaskCtx,
    name: &str,
    block: bool,
    phase: Phase,
) -> anyhow::Result<Option<Outcome>> {
    let tr = &c.tracking;
    if tr.kind == Kind::None {
        if !tr.is_inhibited(name) {
            tr.inhibit(name, t.change.id)?;
        }
        c.shutdown_delay.hold(name);
        return Ok(None);
    }
    if tr.inhibition_owner(name) == Some(t.change.id) {
        // Still inside: after a restart of refreshd the shutdown delay is taken again.
        c.shutdown_delay.hold(name);
        return Ok(None);
    }
    let Some(lock) = tr.try_lock(name).context("cannot take the snap's lock")? else {
        return Ok(Some(lock_busy(name, t.task.retry_count)));
    };
    match check_empty(c, t, name)? {
        Empty::Yes(_) => {
            c.shutdown_delay.hold(name);
            t.log(format!(
                "re-entered the critical section of {name} (its marker was gone)"
            ));
            Ok(None)
        }
        Empty::No(procs) => {
            if block {
                tr.inhibit(name, t.change.id)?;
            }
            drop(lock);
            t.log(format!(
                "{} of {name} started inside the critical section (after a reboot, or a marker removed by hand): waiting for them",
                plural(procs.len())
            ));
            Ok(Some(match phase {
                Phase::Do => wait_for(c, name, &procs),
                // An undo cannot park: try again shortly.
                Phase::Undo => Outcome::Retry {
                    reason: format!("waiting for {} of {name} to exit", plural(procs.len())),
                    after: Some(std::time::Duration::from_secs(1)),
                },
            }))
        }
    }
}

/// Leaves the critical section: the new revision is linked, launches may go on.
pub fn lift_inhibition(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let entry = Entry::of(t)?;
    if phase == Phase::Do {
        let at = unix_ns();
        c.tracking.lift(entry.instance())?;
        c.shutdown_delay.release(entry.instance());
        t.log(format!("critical section left at={at}"));
    }
    if let Entry::Switch(ss) = &entry {
        match phase {
            Phase::Do => super::notices::done(c, t, ss),
            // A later task failed: whoever heard it was updated hears that it was not.
            Phase::Undo => super::notices::undone(c, t, ss),
        }
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

/// `pid 42 (user alice): sleep 100; ...` for the first few processes. The reason is readable by
/// every user through the API, so where /proc hides other users' processes (`hidepid`) the
/// command lines are left out, as `refreshctl status NAME` does. A command line is whatever its
/// user made it (`exec -a`): escaped ([`printable`]), so it cannot forge a line or drive the
/// terminal of whoever reads the reason.
fn describe(procs: &[u32]) -> String {
    let hidden = crate::procfs::hidepid();
    let mut out = String::new();
    for (i, pid) in procs.iter().take(5).enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let cmd = crate::procfs::argv(*pid)
            .map(|argv| {
                argv.into_iter()
                    .filter(|a| !a.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let user = crate::procfs::real_uid(*pid)
            .map(|uid| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| uid.to_string())
            })
            .unwrap_or_else(|| "?".to_owned());
        let cmd: String = if hidden {
            "(command line hidden: /proc has hidepid)".to_owned()
        } else {
            cmd.chars().take(80).collect()
        };
        let _ = write!(
            out,
            "pid {pid} (user {}): {}",
            printable(&user),
            printable(&cmd)
        );
    }
    if procs.len() > 5 {
        let _ = write!(out, "; and {} more", procs.len() - 5);
    }
    out
}
