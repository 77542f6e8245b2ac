//! Task handlers: one module per concern, each with a do and an undo half.
//!
//! Every handler is idempotent (it may be interrupted anywhere and run again) and checks the
//! world rather than trusting that an earlier run did or did not get somewhere.

pub mod apps;
pub mod cleanup;
pub mod data;
pub mod download;
pub mod hooks;
pub mod install;
pub mod launchers;
pub mod notices;
pub mod remove;
pub mod services;
pub mod snapshot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use refreshd_state::{NewChange, NewTask};
use serde::{Deserialize, Serialize};

use crate::engine::{Handler, Outcome, Phase, TaskCtx};
use crate::kinds::{ChangeKind, TaskKind};
use crate::layout::Layout;

/// How revisions' payloads are made available under `snap/NAME/REV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountMode {
    /// Read-only loop mount of the squashfs image (root with loop devices).
    Loop,
    /// Unpacked copy of the image (no loop devices, or not root).
    Extract,
}

impl MountMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MountMode::Loop => "loop",
            MountMode::Extract => "extract",
        }
    }
}

/// What every handler may use.
pub struct Ctx {
    pub layout: Layout,
    pub mount_mode: MountMode,
    pub tracking: Arc<crate::tracking::Tracking>,
    /// Where new revisions come from (`refreshd --store`), if anywhere.
    pub store: Option<Arc<refreshd_store::Store>>,
    /// The pinned root `store` is verified from (`--store-root`, or the layout's); None when the
    /// store is not signed (`--insecure-unsigned-store`) or there is no store. The API shows it.
    pub store_root: Option<std::path::PathBuf>,
    /// How snaps' services are run (systemd, or left alone).
    pub services: services::Services,
    /// How long a snap's hook may run before it is killed (`refreshd --hook-timeout`).
    pub hook_timeout: std::time::Duration,
    /// How many revisions of a snap are kept, the current one included (`refreshd --retain`).
    pub retain: usize,
    /// How long the `user-data` task gives each user's data (`refreshd --user-data-budget`).
    pub user_data_budget: std::time::Duration,
    /// Desktop notifications of pending and finished refreshes (`refreshd --notify`).
    pub notify: Arc<crate::notify::Notifier>,
    /// Shutdown delay locks held during critical sections (logind).
    pub shutdown_delay: Arc<crate::shutdown_delay::ShutdownDelays>,
    /// Snapshots of removed snaps' data: retention, and the sets being worked on.
    pub saved: Arc<snapshot::Saved>,
}

/// The data an install change carries (the change's `data`), shared by its tasks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct SnapSetup {
    /// Instance name: "foo" or "foo_key".
    pub instance: String,
    pub snap_name: String,
    pub instance_key: Option<String>,
    pub revision: String,
    /// The revision current when the change was made, if any.
    pub previous: Option<String>,
    pub sha3_384: String,
    pub size: u64,
    /// The uploaded file waiting in uploads/ for `prepare` to take it.
    pub upload: Option<PathBuf>,
    /// The store revision `download` fetches (instead of an upload).
    #[serde(default)]
    pub download: Option<Download>,
    /// The store channel followed.
    #[serde(default)]
    pub channel: Option<String>,
    /// meta/snap.yaml as found in the image (for a download: filled in by `prepare`).
    pub manifest: String,
    pub version: String,
    pub summary: Option<String>,
    /// `refresh-pending-behavior: block`: inhibit launches as soon as the refresh is pending.
    #[serde(default)]
    pub block_launches: bool,
}

/// A revision to fetch from the store: its index entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Download {
    pub store: String,
    pub revision: u32,
    pub version: String,
    pub path: String,
}

/// The data a remove change carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct RemoveSetup {
    pub instance: String,
    /// The revision current when the removal started.
    pub current: Option<String>,
    /// Every revision on disk.
    pub revisions: Vec<String>,
    /// `remove --purge`: no snapshot of the data is kept.
    #[serde(default)]
    pub purge: bool,
}

/// The data a restore change carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreSetup {
    pub instance: String,
    /// The snapshot put back.
    pub set: u64,
    /// The current revision, whose data the snapshot becomes.
    pub current: String,
    /// The same: the revision the change starts from (for the services' tasks).
    pub previous: String,
}

type HandlerFn = fn(&Ctx, &TaskCtx, Phase) -> anyhow::Result<Outcome>;

struct FnHandler {
    ctx: Arc<Ctx>,
    f: HandlerFn,
}

impl Handler for FnHandler {
    fn run(&self, task: &TaskCtx, phase: Phase) -> Outcome {
        // `{:#}`: the whole chain on one line, each cause once (docs/architecture.md, Errors).
        (self.f)(&self.ctx, task, phase).unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")))
    }
}

/// Every task kind this daemon knows, with its handler.
pub fn handlers(ctx: Arc<Ctx>) -> HashMap<String, Arc<dyn Handler>> {
    let table: [(TaskKind, HandlerFn); 20] = [
        (TaskKind::PrecopyData, install::precopy_data),
        (TaskKind::Download, download::download),
        (TaskKind::WaitForApps, apps::wait_for_apps),
        (TaskKind::LiftInhibition, apps::lift_inhibition),
        (TaskKind::Prepare, install::prepare),
        (TaskKind::Mount, install::mount),
        (TaskKind::SetupData, install::setup_data),
        (TaskKind::UserData, install::user_data),
        (TaskKind::Link, install::link),
        (TaskKind::Launchers, launchers::launchers),
        (TaskKind::Unlink, remove::unlink),
        (TaskKind::Unmount, remove::unmount),
        (TaskKind::Discard, remove::discard),
        (TaskKind::SaveData, snapshot::save_data),
        (TaskKind::RestoreData, snapshot::restore_data),
        (TaskKind::PreRefreshHook, hooks::pre_refresh),
        (TaskKind::PostRefreshHook, hooks::post_refresh),
        (TaskKind::StopServices, services::stop),
        (TaskKind::StartServices, services::start),
        (TaskKind::Cleanup, cleanup::cleanup),
    ];
    table
        .into_iter()
        .map(|(kind, f)| {
            let h: Arc<dyn Handler> = Arc::new(FnHandler {
                ctx: ctx.clone(),
                f,
            });
            (kind.as_str().to_owned(), h)
        })
        .collect()
}

/// The recorded snap.yaml of a revision on disk; a missing record is an inconsistent state.
pub fn recorded_manifest(t: &TaskCtx, instance: &str, rev: &str) -> anyhow::Result<String> {
    Ok(t.db_with(|s| s.revision(instance, rev))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "revision {rev} of {instance:?} is not recorded; the state is inconsistent"
            )
        })?
        .manifest)
}

/// The change's data as `T`.
pub fn setup<T: serde::de::DeserializeOwned>(t: &TaskCtx) -> anyhow::Result<T> {
    serde_json::from_value(t.change.data.clone())
        .map_err(|e| anyhow::anyhow!("change {} has malformed data: {e}", t.change.id))
}

/// The change that installs `ss`: prepare → mount → setup-data → link → launchers →
/// start-services. When a revision is current already (a refresh), the pre-refresh hook runs
/// and the system data is pre-copied while the apps still run; then the critical section:
/// wait-for-apps → stop-services → setup-data → link → launchers → lift-inhibition; then the
/// services start, the post-refresh hook runs, each user's data is carried over as that user,
/// and revisions beyond the retain count go.
pub fn install_change(ss: &SnapSetup) -> NewChange {
    let (n, r) = (&ss.instance, &ss.revision);
    let mut steps = vec![];
    if let Some(d) = &ss.download {
        steps.push((
            TaskKind::Download,
            format!("Download snap {n:?} ({r}) from {}", d.store),
        ));
    }
    steps.extend([
        (TaskKind::Prepare, format!("Prepare snap {n:?} ({r})")),
        (TaskKind::Mount, format!("Mount snap {n:?} ({r})")),
    ]);
    let refresh = ss.previous.is_some();
    if refresh {
        steps.extend([
            (
                TaskKind::PreRefreshHook,
                format!("Run the pre-refresh hook of snap {n:?}"),
            ),
            (
                TaskKind::PrecopyData,
                format!("Copy the data of snap {n:?} ahead of the refresh"),
            ),
            (
                TaskKind::WaitForApps,
                format!("Wait for the apps of snap {n:?} to exit"),
            ),
            (
                TaskKind::StopServices,
                format!("Stop the services of snap {n:?}"),
            ),
        ]);
    }
    steps.extend([
        (
            TaskKind::SetupData,
            format!("Set up data of snap {n:?} ({r})"),
        ),
        (TaskKind::Link, format!("Make snap {n:?} ({r}) available")),
        (
            TaskKind::Launchers,
            format!("Write launchers of snap {n:?} ({r})"),
        ),
    ]);
    if refresh {
        steps.push((
            TaskKind::LiftInhibition,
            format!("Let the apps of snap {n:?} start again"),
        ));
    }
    steps.push((
        TaskKind::StartServices,
        format!("Start the services of snap {n:?} ({r})"),
    ));
    if refresh {
        steps.extend([
            (
                TaskKind::PostRefreshHook,
                format!("Run the post-refresh hook of snap {n:?} ({r})"),
            ),
            (
                TaskKind::UserData,
                format!("Carry each user's data of snap {n:?} to {r}"),
            ),
            (
                TaskKind::Cleanup,
                format!("Discard old revisions of snap {n:?}"),
            ),
        ]);
    }
    let (kind, summary) = match (&ss.download, refresh) {
        (None, _) => (
            ChangeKind::Install,
            format!("Install {n:?} ({r}) from a file"),
        ),
        (Some(_), false) => (
            ChangeKind::Install,
            format!("Install {n:?} ({r}) from the store"),
        ),
        (Some(_), true) => (ChangeKind::Refresh, format!("Refresh {n:?} to {r}")),
    };
    chain(
        kind,
        summary,
        n,
        serde_json::to_value(ss).expect("serializable"),
        steps,
    )
}

/// The change that reverts to `ss.revision` (from `ss.previous`, the current one): the switch
/// alone, in the critical section: wait-for-apps → stop-services → link → launchers →
/// lift-inhibition → start-services. The target is mounted and its data untouched since it
/// was left.
pub fn revert_change(ss: &SnapSetup) -> NewChange {
    let (n, r) = (&ss.instance, &ss.revision);
    chain(
        ChangeKind::Revert,
        format!("Revert {n:?} to {r}"),
        n,
        serde_json::to_value(ss).expect("serializable"),
        vec![
            (
                TaskKind::WaitForApps,
                format!("Wait for the apps of snap {n:?} to exit"),
            ),
            (
                TaskKind::StopServices,
                format!("Stop the services of snap {n:?}"),
            ),
            (
                TaskKind::Link,
                format!("Make snap {n:?} ({r}) current again"),
            ),
            (
                TaskKind::Launchers,
                format!("Write launchers of snap {n:?} ({r})"),
            ),
            (
                TaskKind::LiftInhibition,
                format!("Let the apps of snap {n:?} start again"),
            ),
            (
                TaskKind::StartServices,
                format!("Start the services of snap {n:?} ({r})"),
            ),
        ],
    )
}

/// The change that removes `rs.instance`, once none of its apps runs (a critical section, as a
/// refresh's): wait-for-apps → stop-services → unlink → unmount → save-data → discard. Without
/// `purge` the data in use is saved first, as a snapshot.
pub fn remove_change(rs: &RemoveSetup) -> NewChange {
    let n = &rs.instance;
    let mut steps = vec![
        (
            TaskKind::WaitForApps,
            format!("Wait for the apps of snap {n:?} to exit"),
        ),
        (
            TaskKind::StopServices,
            format!("Stop the services of snap {n:?}"),
        ),
        (TaskKind::Unlink, format!("Make snap {n:?} unavailable")),
        (TaskKind::Unmount, format!("Unmount snap {n:?}")),
    ];
    if !rs.purge {
        steps.push((TaskKind::SaveData, format!("Save the data of snap {n:?}")));
    }
    // Discard is the point of no return and ends the critical section itself: a task after
    // it that failed would undo a remove whose data is gone.
    steps.push((
        TaskKind::Discard,
        format!("Remove data and files of snap {n:?}"),
    ));
    chain(
        ChangeKind::Remove,
        format!("Remove {n:?}"),
        n,
        serde_json::to_value(rs).expect("serializable"),
        steps,
    )
}

/// The change that puts snapshot `rs.set` back as the data of `rs.instance`, once none of its
/// apps runs: wait-for-apps → stop-services → restore-data → lift-inhibition → start-services.
pub fn restore_change(rs: &RestoreSetup) -> NewChange {
    let (n, set) = (&rs.instance, rs.set);
    chain(
        ChangeKind::Restore,
        format!("Restore snapshot {set} of {n:?}"),
        n,
        serde_json::to_value(rs).expect("serializable"),
        vec![
            (
                TaskKind::WaitForApps,
                format!("Wait for the apps of snap {n:?} to exit"),
            ),
            (
                TaskKind::StopServices,
                format!("Stop the services of snap {n:?}"),
            ),
            (
                TaskKind::RestoreData,
                format!("Restore snapshot {set} as the data of snap {n:?}"),
            ),
            (
                TaskKind::LiftInhibition,
                format!("Let the apps of snap {n:?} start again"),
            ),
            (
                TaskKind::StartServices,
                format!("Start the services of snap {n:?}"),
            ),
        ],
    )
}

/// A change whose tasks run one after the other.
fn chain(
    kind: ChangeKind,
    summary: String,
    snap: &str,
    data: serde_json::Value,
    steps: Vec<(TaskKind, String)>,
) -> NewChange {
    NewChange {
        kind: kind.as_str().to_owned(),
        summary,
        snap: Some(snap.to_owned()),
        data,
        tasks: steps
            .into_iter()
            .enumerate()
            .map(|(i, (kind, summary))| NewTask {
                kind: kind.as_str().to_owned(),
                summary,
                data: serde_json::json!({}),
                waits_for: if i == 0 { vec![] } else { vec![i - 1] },
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    /// A task's error is its chain printed with `{:#}`: a real copy failure under the context
    /// setup-data gives it says each cause once.
    #[test]
    fn a_task_error_says_each_cause_once() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        // Under a regular file: ENOTDIR from the first open.
        let src = file.join("1");
        let (staging, dst) = (tmp.path().join(".2.staging"), tmp.path().join("2"));
        let opts = refreshd_copydata::Options::default();
        let e = refreshd_copydata::finish(&src, &staging, &dst, &opts, &mut |_| {})
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))
            .unwrap_err();
        assert_eq!(e.chain().count(), 3, "{e:?}");
        let errno = std::io::Error::from_raw_os_error(libc::ENOTDIR).to_string();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "cannot copy {} to {}: cannot open {}: {errno}",
                src.display(),
                dst.display(),
                file.display()
            )
        );
    }
}
