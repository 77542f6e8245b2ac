//! Launchers in `snap/bin/`: one per app, named like snapd's (`NAME` for the app named like the
//! snap, `NAME.APP` otherwise).
//!
//! Launchers are symlinks to confine-hook, which dispatches on the name it was called by and
//! reads the app's launch description from `var/lib/refreshd/launch/INSTANCE/REV/APP`.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use std::os::unix::fs::DirBuilderExt;

use super::{setup, Ctx, SnapSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::fsutil;

pub fn launchers(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    if let Some(out) = super::apps::reenter_switch(c, t, &ss, phase)? {
        return Ok(out);
    }
    let rev = match phase {
        Phase::Do => Some(ss.revision.clone()),
        Phase::Undo => ss.previous.clone(),
    };
    match rev {
        Some(rev) => {
            let manifest = match phase {
                Phase::Do => ss.manifest.clone(),
                Phase::Undo => super::recorded_manifest(t, &ss.instance, &rev)?,
            };
            let n = write(c, &ss.instance, &manifest)?;
            t.log(format!("wrote {n} launchers for revision {rev}"));
        }
        None => remove_all(c, &ss.instance)?,
    }
    Ok(Outcome::Done)
}

pub(crate) fn launcher_name(instance: &str, app: &str) -> String {
    let snap_name = instance.split('_').next().unwrap_or(instance);
    if app == snap_name {
        instance.to_owned()
    } else {
        format!("{instance}.{app}")
    }
}

/// The launchers of `instance` present in snap/bin.
fn existing(c: &Ctx, instance: &str) -> anyhow::Result<Vec<PathBuf>> {
    let prefix = format!("{instance}.");
    let mut out = vec![];
    for e in fs::read_dir(c.layout.bin_dir())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == instance || name.starts_with(&prefix) {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// Writes the launchers of revision `rev` (symlinks to confine-hook), and removes any
/// launcher of this instance that it no longer has. Returns how many it wrote.
pub fn write(c: &Ctx, instance: &str, manifest: &str) -> anyhow::Result<usize> {
    let yaml = refreshd_snap::yaml::parse(manifest.as_bytes())?;
    let l = &c.layout;
    let mut wanted = BTreeSet::new();
    for app in yaml.apps.keys() {
        let path = l.bin_dir().join(launcher_name(instance, app));
        // confine-hook dispatches on the name it was called by.
        if fs::read_link(&path).ok().as_deref() != Some(l.hook().as_path()) {
            fsutil::symlink_atomic(&l.hook(), &path)?;
        }
        wanted.insert(path);
    }
    for p in existing(c, instance)? {
        if !wanted.contains(&p) && !p.to_string_lossy().contains(fsutil::TMP_MARK) {
            fsutil::remove_file_if_exists(&p)?;
        }
    }
    // Services start through their launchers, so their units follow them.
    super::services::write_units(c, instance, &yaml)?;
    Ok(wanted.len())
}

/// Writes the launch descriptions of revision `rev`, before it can become current: a launch
/// that finds `current` pointing at a revision always finds that revision's descriptions.
pub fn write_descriptions(
    c: &Ctx,
    instance: &str,
    rev: &str,
    manifest: &str,
) -> anyhow::Result<()> {
    let yaml = refreshd_snap::yaml::parse(manifest.as_bytes())?;
    let dir = c.layout.launch_dir(instance).join(rev);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)?;
    for (app, a) in &yaml.apps {
        fsutil::write_atomic(
            &dir.join(app),
            describe(&yaml, rev, &a.command, a).as_bytes(),
            0o644,
        )?;
        // `APP.stop` (app names hold no dot): what `confine-hook --command=stop` runs.
        if let Some(stop) = &a.stop_command {
            fsutil::write_atomic(
                &dir.join(format!("{app}.stop")),
                describe(&yaml, rev, stop, a).as_bytes(),
                0o644,
            )?;
        }
    }
    Ok(())
}

/// The launch description confine-hook reads (format: `refreshd_runctl::LAUNCH_MAGIC`) for
/// `command` (the app's, or its stop-command) split on spaces as snapd's snap-exec does.
fn describe(
    yaml: &refreshd_snap::SnapYaml,
    rev: &str,
    command: &str,
    app: &refreshd_snap::App,
) -> String {
    let mut words = command.split(' ').filter(|w| !w.is_empty());
    let mut out = format!(
        "{}\nsnap-name {}\nversion {}\nrevision {rev}\ncommand {}\n",
        refreshd_runctl::LAUNCH_MAGIC,
        yaml.name,
        yaml.version,
        words.next().unwrap_or("")
    );
    for arg in words {
        out.push_str(&format!("arg {arg}\n"));
    }
    for (k, v) in yaml.environment.iter().chain(app.environment.iter()) {
        out.push_str(&format!("env {k}={v}\n"));
    }
    out
}

pub fn remove_all(c: &Ctx, instance: &str) -> anyhow::Result<()> {
    for p in existing(c, instance)? {
        fsutil::remove_file_if_exists(&p)?;
    }
    super::services::remove_units(c, instance)
}

/// Removes the launch descriptions of one revision, or of every revision.
pub fn remove_descriptions(c: &Ctx, instance: &str, rev: Option<&str>) -> anyhow::Result<()> {
    let dir = c.layout.launch_dir(instance);
    match rev {
        Some(r) => {
            fsutil::remove_tree_if_exists(&dir.join(r))?;
            fsutil::remove_dir_if_empty(&dir)?;
        }
        None => fsutil::remove_tree_if_exists(&dir)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_like_snapd() {
        assert_eq!(launcher_name("hello", "hello"), "hello");
        assert_eq!(launcher_name("hello", "world"), "hello.world");
        assert_eq!(launcher_name("hello_work", "hello"), "hello_work");
        assert_eq!(launcher_name("hello_work", "x"), "hello_work.x");
    }
}
