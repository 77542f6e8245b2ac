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
use super::{ts, ApiError, ApiState, Peer};
use crate::metrics::{wait_started, waiting_for_apps};
use crate::procfs;

type St = State<Arc<ApiState>>;

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
    let (processes, services, inhibited) = st
        .ops
        .workers
        .run(move || -> std::io::Result<_> {
            let tr = &ctx.tracking;
            let pids = tr.procs(&n)?;
            let service_pids = tr.service_procs(&n);
            let hidden = crate::procfs::hidepid();
            let clock = crate::procfs::Clock::read();
            // One look-up per owner, however many processes they have.
            let mut users = std::collections::HashMap::new();
            let mut describe = |pids: Vec<u32>| -> Vec<SnapProcess> {
                pids.into_iter()
                    .filter_map(|pid| process(pid, &clock))
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
                    .collect()
            };
            let processes = describe(pids);
            let services = describe(service_pids);
            Ok((processes, services, tr.is_inhibited(&n)))
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
        services,
        hold: row
            .and_then(|r| r.hold)
            .filter(|h| HoldUntil::active(Some(h), jiff::Timestamp::now()).is_some()),
        warning: super::snaps::store_info(&st.ops.ctx).and_then(|s| s.warning()),
    }))
}

/// A process as the kernel describes it, without its owner's name; None once it is gone.
fn process(pid: u32, clock: &procfs::Clock) -> Option<SnapProcess> {
    let uid = procfs::real_uid(pid)?;
    Some(SnapProcess {
        pid,
        uid,
        user: None,
        command: Some(procfs::argv(pid).unwrap_or_default()),
        comm: procfs::comm(pid).unwrap_or_default(),
        unit: procfs::unit(pid),
        started: procfs::started_ms(pid, clock).map(ts),
    })
}

/// The name of `uid` in the user database; None when it has none.
pub(super) fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_itself() {
        let clock = procfs::Clock::read();
        let me = process(std::process::id(), &clock).expect("our own process");
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert!(!me.command.unwrap().is_empty());
        assert!(!me.comm.is_empty());
        let started = me.started.expect("a start time");
        let age = jiff::Timestamp::now().as_second() - started.as_second();
        assert!((0..3600).contains(&age), "started {started}");
        assert!(process(u32::MAX, &clock).is_none());
    }
}
