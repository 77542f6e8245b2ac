//! `GET /v1/snaps/NAME/status`: what a refresh of a snap waits for — the change in progress,
//! since when it waits, and the snap's processes with their owners and command lines, read
//! from the kernel.
//!
//! Who may see command lines: refreshd reads /proc as root, so it could show anyone what /proc
//! hides from them. It shows a caller what /proc would: everything to root and the admin
//! group, and to anyone else their own processes whole and other users' processes with their
//! command line withheld when /proc is mounted with `hidepid` (without it, every user can read
//! every command line in /proc, and `ps` shows them). Pids and owners are always shown: they
//! are what explains a refresh that waits.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::Json;
use refreshd_client::types::{AppsWait, HoldUntil, SnapProcess, SnapStatus};
use refreshd_snap::InstanceName;
use refreshd_state::Select;

use super::changes::{change_json, View};
use super::{ApiError, ApiState, Peer};
use crate::metrics::{wait_started, waiting_for_apps};

type St = State<Arc<ApiState>>;

fn ts(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

pub async fn status(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<Json<SnapStatus>, ApiError> {
    // Only names that were valid to install get near a path (the snap's cgroups).
    if name.parse::<InstanceName>().is_err() {
        return Err(super::snaps::not_installed(&name));
    }
    let n = name.clone();
    let found = st
        .read(move |s| -> refreshd_state::Result<_> {
            let row = s.snap(&n)?;
            let current = match row.as_ref().and_then(|r| r.current.clone()) {
                Some(rev) => s.revision(&n, &rev)?,
                None => None,
            };
            let change = match s.changes(Select::InProgress, Some(&n))?.into_iter().next() {
                Some(c) => {
                    let tasks = s.tasks(c.id)?;
                    Some((c, tasks))
                }
                None => None,
            };
            Ok((row, current, change))
        })
        .await?;
    let (row, current, change) = found;
    if row.is_none() && change.is_none() {
        return Err(super::snaps::not_installed(&name));
    }
    let admin = peer.is_admin(&st);
    let view = if admin { View::Full } else { View::Public };
    let waiting = change.as_ref().and_then(|(_, tasks)| {
        let t = waiting_for_apps(tasks)?;
        Some(AppsWait {
            task: t.id,
            since: ts(wait_started(tasks, t)),
            // The reason names processes with their command lines: the list below shows each
            // caller what /proc would; the reason is for root and the admin group.
            reason: match view {
                View::Full => t.wait_reason.clone().unwrap_or_default(),
                View::Public => format!("waiting for the processes of {name} to exit"),
            },
        })
    });
    let ctx = st.ops.ctx.clone();
    let n = name.clone();
    let (processes, inhibited) = st
        .ops
        .workers
        .run(move || -> std::io::Result<_> {
            let tr = &ctx.tracking;
            let pids = tr.procs(&n)?;
            let hidden = crate::procfs::hidepid();
            let sys = System::read();
            // One look-up per owner, however many processes they have.
            let mut users = std::collections::HashMap::new();
            let processes: Vec<SnapProcess> = pids
                .into_iter()
                .filter_map(|pid| process(pid, &sys))
                .map(|mut p| {
                    p.user = users
                        .entry(p.uid)
                        .or_insert_with(|| user_name(p.uid))
                        .clone();
                    if hidden && !admin && p.uid != peer.uid {
                        p.command = None;
                    }
                    p
                })
                .collect();
            Ok((processes, tr.is_inhibited(&n)))
        })
        .await?
        .map_err(|e| ApiError::internal(format!("cannot read the cgroups of snap {name}: {e}")))?;
    Ok(Json(SnapStatus {
        name,
        revision: current.as_ref().map(|r| r.revision.clone()),
        version: current.map(|r| r.version),
        tracking: st.ops.ctx.tracking.kind.as_str().to_owned(),
        inhibited,
        change: change.map(|(c, tasks)| change_json(&c, &tasks, false, view)),
        waiting,
        processes,
        hold: row
            .and_then(|r| r.hold)
            .filter(|h| HoldUntil::active(Some(h), jiff::Timestamp::now()).is_some()),
    }))
}

/// What turns a process's start (in clock ticks since boot) into a time.
pub(super) struct System {
    /// Boot time, unix seconds (`btime` in /proc/stat).
    boot: Option<i64>,
    /// Clock ticks per second of /proc's times.
    ticks: u64,
}

impl System {
    pub(super) fn read() -> System {
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        });
        System {
            boot,
            ticks: clock_ticks(),
        }
    }
}

/// Clock ticks per second (`USER_HZ`), the unit of the times in /proc/PID/stat.
pub(super) fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes a constant and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(100)
}

/// The fields of /proc/PID/stat after the process name (which may hold spaces and parens):
/// index 0 is field 3 (state).
pub(super) fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// A process as the kernel describes it, without its owner's name; None once it is gone.
fn process(pid: u32, sys: &System) -> Option<SnapProcess> {
    let dir = format!("/proc/{pid}");
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let uid = real_uid(&status)?;
    let command = std::fs::read(format!("{dir}/cmdline"))
        .ok()
        .map(|b| split_cmdline(&b));
    let comm = std::fs::read_to_string(format!("{dir}/comm"))
        .map(|s| s.trim_end_matches('\n').to_owned())
        .unwrap_or_default();
    let started = std::fs::read_to_string(format!("{dir}/stat"))
        .ok()
        .and_then(|s| start_ms(&s, sys))
        .map(ts);
    Some(SnapProcess {
        pid,
        uid,
        user: None,
        command: Some(command.unwrap_or_default()),
        comm,
        started,
    })
}

/// The name of `uid` in the user database; None when it has none.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The real uid from /proc/PID/status (`Uid: real effective saved fs`).
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// argv from /proc/PID/cmdline: NUL-terminated arguments (empty ones kept).
fn split_cmdline(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(b"\0").unwrap_or(b);
    if b.is_empty() {
        return vec![];
    }
    b.split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// When the process started (unix ms), from field 22 of /proc/PID/stat.
fn start_ms(stat: &str, sys: &System) -> Option<i64> {
    let ticks: u64 = stat_fields(stat).get(19)?.parse().ok()?;
    let boot = sys.boot?;
    let ms = ticks.checked_mul(1000)? / sys.ticks;
    boot.checked_mul(1000)?.checked_add(i64::try_from(ms).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_keep_their_arguments() {
        let cases: &[(&[u8], &[&str])] = &[
            (b"sleep\x00100\x00", &["sleep", "100"]),
            (b"a\0\0b\0", &["a", "", "b"]),
            (b"a b c", &["a b c"]),
            (b"", &[]),
            (b"\xff\0", &["\u{fffd}"]),
        ];
        for (raw, want) in cases {
            assert_eq!(split_cmdline(raw), *want, "{raw:?}");
        }
    }

    #[test]
    fn owners_and_start_times_from_proc() {
        let status = "Name:\tsleep\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(real_uid(status), Some(1000));
        assert_eq!(real_uid("Name: x\n"), None);
        // A name with spaces and parens does not shift the fields.
        let stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 12345 1000 100";
        assert_eq!(stat_fields(stat)[0], "S");
        assert_eq!(stat_fields(stat)[11], "7");
        let sys = System {
            boot: Some(1_790_000_000),
            ticks: 100,
        };
        assert_eq!(start_ms(stat, &sys), Some(1_790_000_123_450));
        assert_eq!(start_ms(stat, &System { boot: None, ..sys }), None);
        assert_eq!(start_ms("garbage", &System::read()), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = process(std::process::id(), &System::read()).expect("our own process");
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert!(!me.command.unwrap().is_empty());
        assert!(!me.comm.is_empty());
        let started = me.started.expect("a start time");
        let age = jiff::Timestamp::now().as_second() - started.as_second();
        assert!((0..3600).contains(&age), "started {started}");
        assert!(process(u32::MAX, &System::read()).is_none());
    }
}
