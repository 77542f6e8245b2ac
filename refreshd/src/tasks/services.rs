//! Snaps' services: apps with `daemon:` run as systemd units `snap.NAME.APP.service`.

use std::path::Path;

use anyhow::bail;

use super::Ctx;
use crate::engine::{Outcome, Phase, TaskCtx};
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
            Choice::Systemd => (Kind::Systemd, "systemd is PID 1 (--services systemd)".into()),
            Choice::Auto if !booted => (
                Kind::None,
                "systemd is not PID 1 (there is no /run/systemd/system): services are left alone"
                    .into(),
            ),
            Choice::Auto if !at_slash => (
                Kind::None,
                format!(
                    "the root is {}, not /, so systemd does not read its units: services are left \
                     alone",
                    root.display()
                ),
            ),
            Choice::Auto => (Kind::Systemd, "systemd is PID 1".into()),
        };
        Ok(Services { kind, reason })
    }
}

pub fn stop(_c: &Ctx, _t: &TaskCtx, _phase: Phase) -> anyhow::Result<Outcome> {
    Ok(Outcome::Done)
}

pub fn start(_c: &Ctx, _t: &TaskCtx, _phase: Phase) -> anyhow::Result<Outcome> {
    Ok(Outcome::Done)
}
