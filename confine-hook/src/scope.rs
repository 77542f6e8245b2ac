//! The join in the systemd world (systemd is PID 1): the launch goes into a transient scope of a
//! systemd manager — the caller's own (`user@UID.service`, so the app stays in the user's tree,
//! under their limits) or, for root and when the user's manager cannot take it, the system
//! manager's — and the scope is recorded in `RUNCTL/units` for the daemon. Nothing of ours is
//! made in the cgroup2 tree: systemd makes and removes the scope's cgroup
//! (docs/runctl-protocol.md, "The systemd world").
//!
//! Called with the snap's lock held (shared). Every step is checked against the kernel: a
//! manager saying "done" proves nothing (anyone can listen on the user's socket), only
//! `/proc/self/cgroup` naming the unit does.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use refreshd_runctl::{scope_unit, MAX_SCOPE_UNIT, SCOPE_RAND_LEN, SYSTEMD_BOOTED, UNITS_DIR};

use crate::dbus::{Conn, Failure, ScopeProps};
use crate::error::{fail, show, Result};
use crate::root::Dir;
use crate::sys::{self, Uid};

/// How long the user's manager may take to put the launch in its scope. Its socket is the
/// user's own, so a manager that does not answer delays only this user's launch (and, as a
/// running app would, refreshes of the snap: the lock is held).
const USER_DEADLINE: Duration = Duration::from_secs(5);
const SYSTEM_DEADLINE: Duration = Duration::from_secs(10);

/// Whether systemd is PID 1 (`sd_booted(3)`).
pub fn systemd_booted() -> bool {
    sys::stat(&CString::new(SYSTEMD_BOOTED).expect("no NUL")).is_ok_and(|st| st.is_dir())
}

/// Where the launch went.
#[derive(Debug)]
pub struct Joined {
    pub unit: Vec<u8>,
    /// The unit's cgroup, relative to the cgroup2 mount.
    pub cgroup: Vec<u8>,
}

/// Puts this process into a new scope of a manager and records it in `RUNCTL/units`.
pub fn join(runctl: &Dir, instance: &[u8], app: &[u8], caller: Uid) -> Result<Joined> {
    let name = show(instance);
    if !crate::cgroup::same_cgroup_ns() {
        return Err(fail!(
            "cannot track {name}: this launch is in a cgroup namespace other than PID 1's, where \
             systemd's units cannot be seen; start the app from the machine's own namespace"
        ));
    }
    let mut rand = [0u8; SCOPE_RAND_LEN / 2];
    sys::getrandom(&mut rand).map_err(|e| fail!("cannot name the app's scope: {e}"))?;
    let hex = hex(&rand);
    let mut buf = [0u8; MAX_SCOPE_UNIT];
    let unit = scope_unit(instance, app, &hex, &mut buf)
        .ok_or_else(|| fail!("cannot name the scope of {name}: invalid name"))?;
    let unit_str = std::str::from_utf8(unit).expect("scope names are ASCII");
    let pid = std::process::id();
    let desc = format!("{name} (started by refreshd's launcher)");

    let user = (caller != Uid::ROOT).then(|| {
        let socket = format!("/run/user/{}/systemd/private", caller.0);
        // Connected as the caller: the socket is theirs, and the manager must see them.
        let conn = sys::with_euid(caller, || {
            Conn::connect(Path::new(&socket), Instant::now() + USER_DEADLINE)
        })
        .map_err(|e| format!("cannot switch to uid {caller}: {e}"))
        .and_then(|c| c);
        let props = ScopeProps {
            pids: &[pid],
            slice: Some("app.slice"),
            description: &desc,
        };
        conn.map_err(Failure::Refused)
            .and_then(|mut conn| ask(&mut conn, unit_str, &props))
    });
    match user {
        Some(Ok(())) => {}
        // R13: asked and not answered, the user's manager may still move the launch, later,
        // out of whatever scope it went to instead. It is not started.
        Some(Err(Failure::Lost(why))) => {
            return Err(fail!(
                "your systemd manager did not put {name} into its scope ({why}); the app was not \
                 started because refreshd could not track it: start it again, or see \
                 `systemctl --user status`"
            ))
        }
        // Nothing was started, nor will be: the system manager takes it.
        refused => {
            if let Some(Err(why)) = refused {
                sys::syslog_notice(&format!(
                    "launch of {name} by uid {caller}: the user's systemd manager cannot take \
                     it ({why}); it goes into a scope of the system manager"
                ));
            }
            let props = ScopeProps {
                pids: &[pid],
                slice: None,
                description: &desc,
            };
            let deadline = Instant::now() + SYSTEM_DEADLINE;
            Conn::connect(Path::new("/run/systemd/private"), deadline)
                .map_err(Failure::Refused)
                .and_then(|mut conn| ask(&mut conn, unit_str, &props))
                .map_err(|why| {
                    fail!(
                        "cannot put {name} into a systemd scope ({why}); the app was not started \
                 because refreshd could not track it: check that systemd is running"
                    )
                })?;
        }
    }
    let joined = verify(unit)?;
    record(runctl, &joined)?;
    Ok(joined)
}

/// Asks for the scope and waits for its job: `Refused` when nothing was or will be started (an
/// error reply, a job that ended otherwise than done), `Lost` when the manager may still act.
fn ask(conn: &mut Conn, unit: &str, props: &ScopeProps<'_>) -> std::result::Result<(), Failure> {
    conn.start_scope(unit, props)?;
    match conn.wait_job_removed(unit) {
        Ok(r) if r == "done" => Ok(()),
        Ok(r) => Err(Failure::Refused(format!("its job for {unit} ended: {r}"))),
        Err(e) => Err(Failure::Lost(e)),
    }
}

/// Checks with the kernel that this process is in `unit`'s cgroup.
fn verify(unit: &[u8]) -> Result<Joined> {
    let text = std::fs::read("/proc/self/cgroup")
        .map_err(|e| fail!("cannot read /proc/self/cgroup: {e}"))?;
    let cgroup = unified_path(&text).unwrap_or_default();
    let tail = [b"/", unit].concat();
    if !cgroup.ends_with(&tail) {
        return Err(fail!(
            "systemd said {} was started, but this process is in {:?}, not in it; the app was \
             not started because refreshd could not track it",
            show(unit),
            show(cgroup)
        ));
    }
    Ok(Joined {
        unit: unit.to_vec(),
        cgroup: cgroup.to_vec(),
    })
}

/// The cgroup2 path (`0::PATH`) of `/proc/self/cgroup` text.
fn unified_path(text: &[u8]) -> Option<&[u8]> {
    text.split(|&c| c == b'\n')
        .find_map(|l| l.strip_prefix(b"0::"))
}

/// `RUNCTL/units/UNIT` holding the cgroup path, written whole (temp + rename) before the lock
/// is released: the daemon's check, under the lock, sees every joined unit.
fn record(runctl: &Dir, j: &Joined) -> Result<()> {
    let units = runctl.ensure(UNITS_DIR.as_bytes())?;
    let c = |b: &[u8]| CString::new(b).map_err(|_| fail!("NUL in a unit name"));
    let (tmp, name) = (
        c(&[b".", j.unit.as_slice(), b".tmp"].concat())?,
        c(&j.unit)?,
    );
    let path = units.child_path(&j.unit);
    let err = |e: std::io::Error| {
        fail!(
            "cannot record the app's scope in {}: {e}; the app was not started because \
             refreshd could not track it",
            show(&path)
        )
    };
    let fd = sys::openat(
        Some(units.as_fd()),
        &tmp,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
        0o644,
    )
    .map_err(err)?;
    let written = std::fs::File::from(fd).write_all(&[j.cgroup.as_slice(), b"\n"].concat());
    if let Err(e) = written.and_then(|()| sys::renameat(units.as_fd(), &tmp, &name)) {
        let _ = sys::unlinkat(units.as_fd(), &tmp);
        return Err(err(e));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> [u8; SCOPE_RAND_LEN] {
    let mut out = [0u8; SCOPE_RAND_LEN];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
        out[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 15)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_lines() {
        let t = b"12:freezer:/refreshd/snap.a\n0::/user.slice/u@1.service/app.slice/x.scope\n";
        assert_eq!(
            unified_path(t),
            Some(&b"/user.slice/u@1.service/app.slice/x.scope"[..])
        );
        assert_eq!(unified_path(b"1:name=systemd:/\n"), None);
        assert_eq!(
            hex(&[0x01, 0xab, 0xff, 0, 0, 0, 0, 0x10]),
            *b"01abff0000000010"
        );
    }
}
