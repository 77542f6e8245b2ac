//! Snaps' services: apps with `daemon:` run as systemd units named like snapd's,
//! `snap.INSTANCE.APP.service`, written under the root's `etc/systemd/system` and started
//! through the app's launcher (so through confine-hook, which recognises a service by the
//! unit's cgroup and leaves it there: docs/services.md).
//!
//! A refresh stops them inside the critical section, before the data is copied, and starts the
//! ones that were running once the new revision is linked and launches are let in again.
//! `refresh-mode: endure` services are neither stopped nor restarted by a refresh. Unit files
//! are always written; they are started and stopped only when systemd is PID 1 and the root is
//! `/` (otherwise systemd would not read them): `refreshctl status` says which.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use refreshd_snap::{App, DaemonKind, RefreshMode, SnapYaml};
use serde::Deserialize;

use super::{data, launchers, Ctx};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::fsutil;
use crate::kinds::{ChangeKind, TaskKind};
use crate::layout::Layout;

/// `refreshd --services`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// systemd when it is PID 1 and the root is `/`; otherwise none.
    Auto,
    Systemd,
    None,
}

/// How services are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Units are started and stopped through systemctl.
    Systemd,
    /// Unit files are written; nothing is started or stopped.
    None,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Systemd => "systemd",
            Kind::None => "none",
        }
    }
}

/// How services are run, and why.
#[derive(Debug, Clone)]
pub struct Services {
    pub kind: Kind,
    pub reason: String,
}

/// Whether systemd is PID 1 (as `sd_booted()` tells).
fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

impl Services {
    pub fn setup(layout: &Layout, choice: Choice) -> anyhow::Result<Services> {
        let root = layout.root();
        let at_slash = root == Path::new("/");
        let booted = systemd_booted();
        let (kind, reason) = match choice {
            Choice::None => (
                Kind::None,
                "services are left alone (--services none); their unit files are still written"
                    .to_owned(),
            ),
            Choice::Systemd if !booted => bail!(
                "--services systemd: systemd is not running as PID 1 (there is no \
                 /run/systemd/system); use --services none, or auto"
            ),
            Choice::Systemd if !at_slash => bail!(
                "--services systemd needs --root /: systemd reads units from /etc/systemd/system, \
                 not from {}/etc/systemd/system",
                root.display()
            ),
            Choice::Systemd => (Kind::Systemd, "systemd is PID 1".into()),
            Choice::Auto if !booted => (
                Kind::None,
                "systemd is not PID 1 (there is no /run/systemd/system): services are left alone"
                    .into(),
            ),
            Choice::Auto if !at_slash => (
                Kind::None,
                format!(
                    "the root is {}, not /, so systemd does not read its units: services are \
                     left alone",
                    root.display()
                ),
            ),
            Choice::Auto => (Kind::Systemd, "systemd is PID 1".into()),
        };
        Ok(Services { kind, reason })
    }
}

/// The unit of an app: `snap.INSTANCE.APP.service`.
pub fn unit_name(instance: &str, app: &str) -> String {
    format!("snap.{instance}.{app}.service")
}

/// The services of a revision, by app name.
fn daemons(yaml: &SnapYaml) -> BTreeMap<&str, &App> {
    yaml.daemons().collect()
}

fn endures(app: &App) -> bool {
    app.refresh_mode == Some(RefreshMode::Endure)
}

/// A path in a unit file: `%` is systemd's specifier character. Control characters could
/// start a new directive, so they are refused.
fn unit_path(p: &Path) -> anyhow::Result<String> {
    let s = p.to_str().with_context(|| {
        format!(
            "{} is not UTF-8: it cannot go into a unit file",
            p.display()
        )
    })?;
    if s.chars().any(char::is_control) {
        bail!(
            "{:?} holds a control character: it cannot go into a unit file; use a root without one",
            s
        );
    }
    Ok(s.replace('%', "%%"))
}

/// A command-line word in `ExecStart=`/`ExecStop=`: quoted, with `\` and `"` escaped.
fn exec_word(p: &Path) -> anyhow::Result<String> {
    let s = unit_path(p)?;
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// The unit file of one service. Names are validated snap and app names (no spaces, quotes or
/// specifiers); paths come from the root.
pub fn unit_text(l: &Layout, instance: &str, app_name: &str, app: &App) -> anyhow::Result<String> {
    let launcher = l
        .bin_dir()
        .join(launchers::launcher_name(instance, app_name));
    let mut u = String::new();
    let _ = writeln!(
        u,
        "# Written by refreshd for snap {instance}; rewritten at every refresh: do not edit.\n\
         [Unit]\n\
         Description=Service for snap application {instance}.{app_name}\n\
         X-Refreshd-Snap={instance}\n\
         After=refreshd-boot.service\n\
         \n\
         [Service]"
    );
    let kind = app.daemon.unwrap_or(DaemonKind::Simple);
    let ty = match kind {
        // Without a bus name systemd cannot wait for the name; the service starts as simple.
        DaemonKind::Dbus => "simple",
        k => k.as_str(),
    };
    let _ = writeln!(u, "Type={ty}");
    if kind == DaemonKind::Oneshot {
        let _ = writeln!(u, "RemainAfterExit=yes");
    }
    let _ = writeln!(u, "ExecStart={}", exec_word(&launcher)?);
    if app.stop_command.is_some() {
        // confine-hook runs the stop-command from the same revision, in the unit's cgroup.
        let _ = writeln!(
            u,
            "ExecStop={} --command=stop {instance}.{app_name}",
            exec_word(&l.hook())?
        );
    }
    if let Some(t) = app.stop_timeout_duration() {
        let _ = writeln!(u, "TimeoutStopSec={}ms", t.as_millis().max(1));
    }
    let _ = writeln!(u, "SyslogIdentifier={instance}.{app_name}");
    let _ = writeln!(u, "Restart=on-failure");
    let _ = writeln!(
        u,
        "WorkingDirectory=-{}",
        unit_path(&l.data_current(instance))?
    );
    let _ = writeln!(u, "\n[Install]\nWantedBy=multi-user.target");
    Ok(u)
}

/// The unit files of `instance` present in the unit directory.
fn existing_units(l: &Layout, instance: &str) -> Vec<String> {
    let prefix = format!("snap.{instance}.");
    let Ok(rd) = fs::read_dir(l.unit_dir()) else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            // snap.INSTANCE.APP.service, APP without dots: not another instance's.
            n.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".service"))
                .is_some_and(|app| !app.is_empty() && !app.contains('.'))
        })
        .collect()
}

/// Writes the unit files of a revision and removes the instance's others; tells systemd when
/// anything changed. Returns how many units the revision has.
pub fn write_units(c: &Ctx, instance: &str, yaml: &SnapYaml) -> anyhow::Result<usize> {
    let l = &c.layout;
    let mut changed = false;
    let mut wanted = BTreeSet::new();
    for (name, app) in daemons(yaml) {
        let unit = unit_name(instance, name);
        let path = l.unit_dir().join(&unit);
        let text = unit_text(l, instance, name, app)?;
        if fs::read(&path).ok().as_deref() != Some(text.as_bytes()) {
            fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
            changed = true;
        }
        wanted.insert(unit);
    }
    for unit in existing_units(l, instance) {
        if !wanted.contains(&unit) {
            fsutil::remove_file_if_exists(&l.unit_dir().join(&unit))?;
            changed = true;
        }
    }
    if changed {
        daemon_reload(c)?;
    }
    Ok(wanted.len())
}

/// Removes every unit file of `instance`.
pub fn remove_units(c: &Ctx, instance: &str) -> anyhow::Result<()> {
    let l = &c.layout;
    let units = existing_units(l, instance);
    for unit in &units {
        fsutil::remove_file_if_exists(&l.unit_dir().join(unit))?;
    }
    if !units.is_empty() {
        daemon_reload(c)?;
    }
    Ok(())
}

fn daemon_reload(c: &Ctx) -> anyhow::Result<()> {
    if c.services.kind == Kind::Systemd {
        systemctl(&["daemon-reload"])?;
    }
    Ok(())
}

/// Runs systemctl; a failure carries its one-line reason.
fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("systemctl")
        .arg("--no-ask-password")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run systemctl")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            refreshd_snap::text::one_line(err.trim())
        );
    }
    Ok(())
}

/// Whether systemctl's query answers yes (`is-active`, `is-enabled`).
fn query(verb: &str, unit: &str) -> anyhow::Result<bool> {
    let st = Command::new("systemctl")
        .args(["--no-ask-password", "--quiet", verb, unit])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run systemctl")?;
    Ok(st.success())
}

/// Whether a unit has nothing running (inactive or failed; not activating, not deactivating).
fn inactive(unit: &str) -> anyhow::Result<bool> {
    let out = Command::new("systemctl")
        .args([
            "--no-ask-password",
            "show",
            "-p",
            "ActiveState",
            "--value",
            unit,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run systemctl")?;
    let state = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && matches!(state.trim(), "inactive" | "failed"))
}

/// The instance a change is about (install, refresh, revert and remove data all name it).
#[derive(Deserialize)]
struct Instance {
    instance: String,
    #[serde(default)]
    previous: Option<String>,
}

/// The current revision's snap.yaml, if the snap has a current revision.
fn current_yaml(t: &TaskCtx, instance: &str) -> anyhow::Result<Option<(String, SnapYaml)>> {
    let Some(cur) = t.db_with(|s| s.snap(instance))?.and_then(|r| r.current) else {
        return Ok(None);
    };
    revision_yaml(t, instance, &cur).map(|y| y.map(|y| (cur, y)))
}

fn revision_yaml(t: &TaskCtx, instance: &str, rev: &str) -> anyhow::Result<Option<SnapYaml>> {
    let Some(row) = t.db_with(|s| s.revision(instance, rev))? else {
        return Ok(None);
    };
    Ok(Some(refreshd_snap::yaml::parse(row.manifest.as_bytes())?))
}

/// Logs, once per task, that services are left alone, when the snap has any.
fn left_alone(c: &Ctx, t: &TaskCtx, yaml: &SnapYaml) -> Outcome {
    let n = yaml.daemons().count();
    if n > 0 {
        t.log(format!("{n} service(s) left alone: {}", c.services.reason));
    }
    Outcome::Done
}

/// Stops the current revision's services (all of them when the snap is being removed; those
/// with `refresh-mode: endure` stay up through a refresh). Undo starts again what was active.
pub fn stop(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let inst: Instance = super::setup(t)?;
    let removing = ChangeKind::Remove.is(&t.change.kind);
    let Some((rev, yaml)) = current_yaml(t, &inst.instance)? else {
        return Ok(Outcome::Done);
    };
    if c.services.kind == Kind::None {
        return Ok(left_alone(c, t, &yaml));
    }
    let units: Vec<String> = daemons(&yaml)
        .into_iter()
        .filter(|(_, app)| removing || !endures(app))
        .map(|(name, _)| unit_name(&inst.instance, name))
        .collect();
    match phase {
        Phase::Do => {
            // A second run (after a crash) keeps what the first one saw: by now the units
            // may be stopped by our own hand.
            let mut rec: data::StopServices = t.data();
            let active = match rec.active.clone() {
                Some(active) => active,
                None => {
                    let mut active = vec![];
                    for u in &units {
                        if query("is-active", u)? {
                            active.push(u.clone());
                        }
                        if removing && query("is-enabled", u)? {
                            rec.enabled.push(u.clone());
                        }
                    }
                    rec.active = Some(active.clone());
                    t.record(&rec);
                    active
                }
            };
            for u in &units {
                // At boot the services are ordered after refreshd-boot.service and wait with
                // a queued start job; stopping an inactive unit would cancel that job, and the
                // service would not come up after the refresh. A unit with nothing running is
                // left alone: if it starts now, confine-hook holds it until the section ends.
                if !removing && !active.contains(u) && inactive(u)? {
                    continue;
                }
                systemctl(&["stop", u])?;
                if removing {
                    systemctl(&["disable", u])?;
                }
            }
            t.log(format!(
                "stopped {} service(s) of revision {rev} ({} were active)",
                units.len(),
                active.len()
            ));
        }
        Phase::Undo => {
            let rec: data::StopServices = t.data();
            for u in rec.enabled.iter().filter(|u| units.contains(u)) {
                systemctl(&["enable", u])?;
            }
            let mut started = 0;
            for u in rec.active.iter().flatten().filter(|u| units.contains(u)) {
                // Queued, not waited for: this undo runs inside the critical section, where
                // the service's launch waits for the inhibition that wait-for-apps' undo, next,
                // lifts. Waiting here would deadlock a notify or forking service.
                systemctl(&["start", "--no-block", u])
                    .with_context(|| format!("cannot start {u} again; see journalctl -u {u}"))?;
                started += 1;
            }
            t.log(format!(
                "started {started} service(s) of revision {rev} again"
            ));
        }
    }
    Ok(Outcome::Done)
}

/// What start-services does with one service of the new current revision.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// New in this revision (or a fresh install): enable and start.
    EnableStart,
    /// Was running before the refresh: start.
    Start,
    /// `refresh-mode: endure`, not stopped: leave it.
    Endured,
    /// Was not running before the refresh: leave it stopped.
    LeaveStopped,
}

fn plan(app: &str, endure: bool, previous: Option<&BTreeSet<String>>, was_active: bool) -> Plan {
    match previous {
        None => Plan::EnableStart,
        Some(prev) if !prev.contains(app) => Plan::EnableStart,
        Some(_) if endure => Plan::Endured,
        Some(_) if was_active => Plan::Start,
        Some(_) => Plan::LeaveStopped,
    }
}

/// Starts the services of the (new) current revision: on an install all of them, enabled; on
/// a refresh or revert those stop-services found running, plus services new in this revision.
/// Undo stops them again (and disables what it enabled).
pub fn start(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let inst: Instance = super::setup(t)?;
    let Some((rev, yaml)) = current_yaml(t, &inst.instance)? else {
        return Ok(Outcome::Done);
    };
    if c.services.kind == Kind::None {
        return Ok(left_alone(c, t, &yaml));
    }
    // The services of the revision the change started from, and which of them ran.
    let previous: Option<BTreeSet<String>> = match &inst.previous {
        Some(p) => revision_yaml(t, &inst.instance, p)?
            .map(|y| daemons(&y).keys().map(|k| k.to_string()).collect()),
        None => None,
    };
    let was_active: BTreeSet<String> = t
        .db_with(|s| s.tasks(t.change.id))?
        .into_iter()
        .filter(|task| TaskKind::StopServices.is(&task.kind))
        .filter_map(|task| serde_json::from_value::<data::StopServices>(task.data).ok())
        .flat_map(|s| s.active.unwrap_or_default())
        .collect();
    let mut done = vec![];
    for (name, app) in daemons(&yaml) {
        let unit = unit_name(&inst.instance, name);
        let p = plan(
            name,
            endures(app),
            previous.as_ref(),
            was_active.contains(&unit),
        );
        match (phase, &p) {
            (Phase::Do, Plan::EnableStart | Plan::Start) => {
                if p == Plan::EnableStart {
                    systemctl(&["enable", &unit])?;
                }
                if let Err(e) = systemctl(&["start", &unit]) {
                    return Ok(Outcome::Failed(format!(
                        "service {unit} of revision {rev} did not start: {e:#}"
                    )));
                }
                done.push(unit);
            }
            (Phase::Undo, Plan::EnableStart | Plan::Start) => {
                systemctl(&["stop", &unit])?;
                if p == Plan::EnableStart {
                    systemctl(&["disable", &unit])?;
                }
                done.push(unit);
            }
            (_, Plan::Endured) => t.log(format!(
                "{unit} keeps running through the refresh (refresh-mode: endure)"
            )),
            (Phase::Do, Plan::LeaveStopped) => t.log(format!(
                "{unit} was not running before the refresh: left stopped"
            )),
            (Phase::Undo, Plan::LeaveStopped) => {}
        }
    }
    if !done.is_empty() {
        let verb = if phase == Phase::Do {
            "started"
        } else {
            "stopped"
        };
        t.log(format!("{verb} {} of revision {rev}", done.join(", ")));
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(yaml: &str) -> (SnapYaml, String) {
        let text = format!("name: svc\nversion: '1'\napps:\n{yaml}");
        (refreshd_snap::yaml::parse(text.as_bytes()).unwrap(), text)
    }

    #[test]
    fn unit_files_look_like_snapds() {
        let (y, _) = app(
            "  daemon:\n    command: bin/d --flag\n    daemon: simple\n    stop-command: bin/stop\n    stop-timeout: 1m30s\n",
        );
        let l = Layout::new("/");
        let u = unit_text(&l, "svc", "daemon", &y.apps["daemon"]).unwrap();
        assert_eq!(
            u,
            "# Written by refreshd for snap svc; rewritten at every refresh: do not edit.\n\
             [Unit]\n\
             Description=Service for snap application svc.daemon\n\
             X-Refreshd-Snap=svc\n\
             After=refreshd-boot.service\n\
             \n\
             [Service]\n\
             Type=simple\n\
             ExecStart=\"/snap/bin/svc.daemon\"\n\
             ExecStop=\"/usr/lib/refreshd/confine-hook\" --command=stop svc.daemon\n\
             TimeoutStopSec=90000ms\n\
             SyslogIdentifier=svc.daemon\n\
             Restart=on-failure\n\
             WorkingDirectory=-/var/snap/svc/current\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n"
        );
        assert_eq!(unit_name("svc_x", "daemon"), "snap.svc_x.daemon.service");
    }

    #[test]
    fn oneshot_remains_and_paths_are_escaped() {
        let (y, _) = app("  once:\n    command: bin/once\n    daemon: oneshot\n");
        let l = Layout::new("/srv/a %b \"c\"");
        let u = unit_text(&l, "svc", "once", &y.apps["once"]).unwrap();
        assert!(u.contains("Type=oneshot\nRemainAfterExit=yes\n"), "{u}");
        assert!(
            u.contains("ExecStart=\"/srv/a %%b \\\"c\\\"/snap/bin/svc.once\"\n"),
            "{u}"
        );
        assert!(u.contains("WorkingDirectory=-/srv/a %%b \"c\"/var/snap/svc/current\n"));
        let bad = Layout::new("/srv/a\nExecStartPre=/bin/evil");
        let e = unit_text(&bad, "svc", "once", &y.apps["once"]).unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
    }

    #[test]
    fn start_plans() {
        let prev: BTreeSet<String> = ["a".to_string()].into();
        assert_eq!(plan("a", false, None, false), Plan::EnableStart);
        assert_eq!(plan("b", false, Some(&prev), false), Plan::EnableStart);
        assert_eq!(plan("a", false, Some(&prev), true), Plan::Start);
        assert_eq!(plan("a", false, Some(&prev), false), Plan::LeaveStopped);
        assert_eq!(plan("a", true, Some(&prev), false), Plan::Endured);
    }
}
