//! confine-hook: the setuid-root shim that starts every app of a snap.
//!
//! One launch, in order (each step in the module that owns it):
//! 1. `privs`: the caller's real uid, gid and groups, captured before anything else;
//!    `args`: which app, from `argv[0]`'s basename or `confine-hook NAME.APP -- ARGS`.
//! 2. `root`: the root, from `/proc/self/exe` minus `usr/lib/refreshd/confine-hook`; every
//!    directory used is reached with `O_NOFOLLOW` from its parent's fd and must be root's.
//! 3. `runctl`: take `snap.NAME.lock`; while `snap.NAME.inhibited` exists, release it and
//!    block on inotify until the marker is gone.
//! 4. `cgroup`: join `PARENT/snap.NAME` in the v1 freezer and v2 hierarchies — unless this
//!    is the snap's service started by systemd (in the unit's own cgroup), which stays there.
//!    When systemd is PID 1, `scope` puts the launch into a transient scope of the caller's
//!    systemd manager (or the system's) instead of the v2 group, and records it in
//!    `RUNCTL/units`.
//! 5. `runctl`: create `snap.NAME.running`, release the lock.
//! 6. `snap/NAME/current` → REV, then `launch`: read the launch description.
//! 7. `privs`: drop privileges; `userdata`: make the caller's data directory of the revision
//!    ready (a copy of their previous one, the first time they run it); `env`: build the
//!    environment; execve. (`--prepare-data` stops before `env`.)
//!
//! `sys` is the only module allowed `unsafe`. Nothing here talks to the daemon: launches keep
//! working while refreshd is stopped.

#![deny(unsafe_code)]

mod args;
mod cgroup;
pub mod dbus;
mod env;
mod error;
mod launch;
mod privs;
mod root;
mod runctl;
mod scope;
mod sys;
mod trust;
mod userdata;

/// The pure parts of a launch, for the fuzz targets in fuzz/ (not an interface).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::args::{parse, Target};
    pub use crate::env::{allowed, build, reroot_home, Env, SnapVars, MAX_VALUE, PATH};
}

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::error::{fail, show, Result, EXIT_NOT_FOUND};
use crate::root::{valid_revision, Root};

/// Runs the launcher; returns the exit status when it could not start the app.
pub fn hook_main() -> i32 {
    match launch_app() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("confine-hook: {e}");
            e.code()
        }
    }
}

fn launch_app() -> Result<Infallible> {
    // Before anything can change them.
    let caller = privs::Caller::capture()?;
    // What root makes on the caller's behalf (markers, the lock, cgroups) is root's group's,
    // not the caller's: a setuid program's effective gid is still the caller's until now.
    if sys::geteuid() == sys::Uid::ROOT {
        sys::setegid(sys::Gid::ROOT)
            .map_err(|e| fail!("cannot take root's group for what is made as root: {e}"))?;
    }
    // Markers and directories get exactly the modes we ask for; the app gets the caller's.
    let caller_umask = sys::umask(0o022);
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let target = args::parse(&argv)?;
    let name = show(&target.instance);
    if sys::geteuid() != sys::Uid::ROOT {
        return Err(fail!(
            "not running as root: confine-hook must be installed setuid-root at \
             ROOT/{} (chown root, chmod 4755) and started through the launchers in \
             ROOT/snap/bin",
            refreshd_runctl::HOOK_PATH
        ));
    }
    let root = Root::discover()?;

    // Refuse an unknown snap before creating any marker or cgroup for it.
    let not_installed = || {
        fail!(
            "snap {name} is not installed (there is no {})",
            show(&root.join(&[b"snap/", target.instance.as_slice()].concat()))
        )
    };
    let snap_dir = root.dir.try_open(b"snap")?.ok_or_else(not_installed)?;
    let instance_dir = snap_dir
        .try_open(&target.instance)?
        .ok_or_else(not_installed)?;

    let runctl = runctl::open_dir(&root)?;
    // A service started by systemd stays in its unit's cgroup: refreshd stops and starts
    // services itself, around the critical section, and does not wait for them.
    let service = cgroup::in_service_unit(&target.instance, &target.app);
    // Kept open until execve closes it (see runctl::Waiter).
    let mut waiter = None;
    if service && target.stop {
        // A stop-command must run even inside the critical section: refreshd stops the
        // services there.
    } else {
        let lock =
            runctl::lock_when_not_inhibited(&runctl, &target.instance, caller.uid, &mut waiter)?;
        if !service {
            let systemd = scope::systemd_booted();
            cgroup::join_all(&root.path, &target.instance, systemd)?;
            if systemd {
                scope::join(&runctl, &target.instance, &target.app, caller.uid)?;
            }
            runctl::mark_running(&runctl, &target.instance)?;
        }
        drop(lock);
    }

    let rev = current_revision(&instance_dir, &name)?;
    let revision_dir = launch::RevisionDir::open(&root, &target.instance, &rev)?;
    let data = revision_dir.read_data()?;
    if target.prepare_data {
        let dropped = caller.drop_privileges()?;
        let home = caller_home(&root, caller.uid)?;
        let done = userdata::prepare(&dropped, &home, &target.instance, &rev, data.as_ref())?;
        println!("{}", done.describe(&target.instance, &rev));
        drop(waiter);
        std::process::exit(0);
    }
    let desc = if target.stop {
        [target.app.as_slice(), b".stop"].concat()
    } else {
        target.app.clone()
    };
    let launch = revision_dir.read_app(&desc)?;
    if launch
        .snap_name
        .as_deref()
        .is_some_and(|n| n.as_bytes() != target.snap_name())
        || launch
            .revision
            .as_deref()
            .is_some_and(|r| r.as_bytes() != rev)
    {
        return Err(fail!(
            "refusing the launch description of {name} revision {}: it describes snap {:?} \
             revision {:?}; restart refreshd so it rewrites it",
            show(&rev),
            launch.snap_name.as_deref().unwrap_or("?"),
            launch.revision.as_deref().unwrap_or("?")
        ));
    }

    let dropped = caller.drop_privileges()?;

    // As the user from here on.
    let pw = passwd(caller.uid)?;
    let home = env::reroot_home(&root.path, &pw.home);
    let vars = env::SnapVars {
        root: &root.path,
        instance: &target.instance,
        snap_name: target.snap_name(),
        instance_key: target.instance_key(),
        revision: &rev,
        version: launch.version.as_deref().unwrap_or_default().as_bytes(),
        user: &pw.name,
        home: &home,
    };
    let caller_env =
        env::Env::from_caller(std::env::vars_os().map(|(k, v)| (k.into_vec(), v.into_vec())));
    let envp = env::build(caller_env, &vars, &launch.env).to_cstrings();
    userdata::prepare(&dropped, &home, &target.instance, &rev, data.as_ref())?;

    let rel = [
        b"snap/",
        target.instance.as_slice(),
        b"/",
        &rev,
        b"/",
        launch.command.as_bytes(),
    ]
    .concat();
    let program = root.join(&rel);
    let cprogram = CString::new(program.clone()).map_err(|_| fail!("NUL in the program path"))?;
    let mut argvp = vec![cprogram.clone()];
    for a in &launch.args {
        argvp.push(CString::new(a.as_bytes()).map_err(|_| fail!("NUL in a launch argument"))?);
    }
    for a in &target.args {
        // Arguments from the kernel's argv never hold NUL.
        argvp.push(CString::new(a.as_bytes()).map_err(|_| fail!("NUL in an argument"))?);
    }
    trust::check_program(&instance_dir, &rev, launch.command.as_bytes())?;
    sys::umask(caller_umask);
    sys::default_sigpipe().map_err(|e| fail!("cannot reset SIGPIPE: {e}"))?;
    let e = sys::execve(&cprogram, &argvp, &envp);
    drop(waiter);
    let err = fail!(
        "cannot run {} ({} of snap {name} revision {}): {e}{}",
        show(&program),
        show(&target.app),
        show(&rev),
        if e.raw_os_error() == Some(libc::ENOENT) {
            "; the revision may not be mounted: restart refreshd, or reinstall the snap"
        } else {
            ""
        }
    );
    Err(if e.raw_os_error() == Some(libc::ENOENT) {
        err.with_code(EXIT_NOT_FOUND)
    } else {
        err
    })
}

/// Reads and validates `snap/INSTANCE/current`.
fn current_revision(instance_dir: &root::Dir, name: &str) -> Result<Vec<u8>> {
    let link = instance_dir.child_path(b"current");
    let rev = instance_dir
        .readlink(b"current", 64)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => fail!(
                "snap {name} has no current revision ({} is missing)",
                show(&link)
            ),
            Some(libc::EINVAL) => fail!("refusing {}: it is not a symbolic link", show(&link)),
            _ => fail!("cannot read {}: {e}", show(&link)),
        })?;
    if !valid_revision(&rev) {
        return Err(fail!(
            "refusing {}: it points to {:?}, which is not a revision (like 12 or x3)",
            show(&link),
            show(&rev[..rev.len().min(64)])
        ));
    }
    Ok(rev)
}

/// The caller's passwd entry: where their home, and so their snap data, is.
fn passwd(uid: sys::Uid) -> Result<sys::Passwd> {
    sys::getpwuid(uid)
        .map_err(|e| fail!("cannot look up uid {uid}: {e}"))?
        .ok_or_else(|| {
            fail!(
                "uid {uid} has no passwd entry, so it has no home for the snap's data; add a user \
                 for it"
            )
        })
}

/// The caller's home directory under the root.
fn caller_home(root: &Root, uid: sys::Uid) -> Result<Vec<u8>> {
    Ok(env::reroot_home(&root.path, &passwd(uid)?.home))
}
