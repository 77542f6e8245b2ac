//! Everything refreshd reads of the kernel's /proc: the machine (mount table, boot, locks),
//! other processes (owner, command line, start, environment) and refreshd itself (CPU time,
//! memory, descriptors). One module, so that what is trusted of /proc, and how its formats are
//! parsed, is in one place (refreshd/tests/procfs.rs keeps it so).

use std::fs;
use std::io;

/// This process's mount table (`/proc/self/mountinfo`): the cgroup hierarchies, `hidepid`.
pub(crate) fn mountinfo() -> io::Result<Vec<u8>> {
    fs::read("/proc/self/mountinfo")
}

/// Whether /proc hides other users' processes (`hidepid`): then what refreshd shows of a
/// process is no more than a user could see for themselves.
pub(crate) fn hidepid() -> bool {
    hidepid_in(&mountinfo().unwrap_or_default())
}

/// The systemd unit a process is in: the last component of its cgroup2 path when that names a
/// scope or a service (`/proc/PID/cgroup`, line `0::PATH`); None elsewhere, or once it is gone.
pub(crate) fn unit(pid: u32) -> Option<String> {
    unit_in(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

fn unit_in(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    // An app may make cgroups of its own inside its scope: the unit is the deepest unit name.
    path.rsplit('/')
        .find(|c| c.ends_with(".scope") || c.ends_with(".service"))
        .map(str::to_owned)
}

/// Whether /proc (the last mount on /proc in `mountinfo`) hides other users' processes.
fn hidepid_in(mountinfo: &[u8]) -> bool {
    let text = String::from_utf8_lossy(mountinfo);
    let mut hidden = false;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if left.split(' ').nth(4) != Some("/proc") {
            continue;
        }
        let mut r = right.split(' ');
        if r.next() != Some("proc") {
            continue;
        }
        let opts = r.nth(1).unwrap_or_default();
        hidden = opts.split(',').any(|o| {
            o.strip_prefix("hidepid=")
                .is_some_and(|v| v != "0" && v != "off")
        });
    }
    hidden
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), trimmed; empty if unreadable.
pub(crate) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The machine's file locks (`/proc/locks`); empty if unreadable.
pub(crate) fn locks() -> String {
    fs::read_to_string("/proc/locks").unwrap_or_default()
}

/// Every process's pid, as listed when read.
pub(crate) fn pids() -> io::Result<Vec<u32>> {
    let mut out = vec![];
    for entry in fs::read_dir("/proc")? {
        if let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            out.push(pid);
        }
    }
    Ok(out)
}

/// A process's environment as it started (`NAME=VALUE`, NUL-separated); None once it is gone
/// or when it may not be read.
pub(crate) fn environ(pid: u32) -> Option<Vec<u8>> {
    fs::read(format!("/proc/{pid}/environ")).ok()
}

/// A process's arguments (empty ones kept); None once it is gone.
pub(crate) fn argv(pid: u32) -> Option<Vec<String>> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| split_cmdline(&b))
}

/// A process's real uid; None once it is gone.
pub(crate) fn real_uid(pid: u32) -> Option<u32> {
    real_uid_in(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// A process's name (`comm`: its executable's, or what it set); None once it is gone.
pub(crate) fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

/// When a process started (unix ms); None once it is gone or when the clock is unknown.
pub(crate) fn started_ms(pid: u32, clock: &Clock) -> Option<i64> {
    start_ms(
        &fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
        clock,
    )
}

/// What turns a process's start (in clock ticks since boot) into a time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Boot time, unix seconds (`btime` in /proc/stat).
    boot: Option<i64>,
    /// Clock ticks per second of /proc's times.
    ticks: u64,
}

impl Clock {
    pub(crate) fn read() -> Clock {
        let boot = fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        });
        Clock {
            boot,
            ticks: clock_ticks(),
        }
    }
}

/// Clock ticks per second (`USER_HZ`), the unit of the times in /proc/PID/stat.
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// What refreshd itself uses: CPU time, resident memory, open descriptors (None: unreadable).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Own {
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) resident_bytes: Option<u64>,
    pub(crate) open_fds: Option<u64>,
}

/// This process's figures, from /proc/self.
pub(crate) fn own() -> Own {
    let cpu_seconds = fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        let f = stat_fields(&s);
        // utime and stime: fields 14 and 15.
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / clock_ticks() as f64)
    });
    let resident_bytes = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    });
    // The directory's own descriptor, open while it is read, is not counted.
    let open_fds = fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1) as u64);
    Own {
        cpu_seconds,
        resident_bytes,
        open_fds,
    }
}

/// The fields of /proc/PID/stat after the process name (which may hold spaces and parens):
/// index 0 is field 3 (state).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// The real uid from /proc/PID/status (`Uid: real effective saved fs`).
fn real_uid_in(status: &str) -> Option<u32> {
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
fn start_ms(stat: &str, clock: &Clock) -> Option<i64> {
    let ticks: u64 = stat_fields(stat).get(19)?.parse().ok()?;
    let boot = clock.boot?;
    let ms = ticks.checked_mul(1000)? / clock.ticks;
    boot.checked_mul(1000)?.checked_add(i64::try_from(ms).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/snap.a.b.refreshd-0123456789abcdef.scope\n";
        assert_eq!(
            unit_in(user).as_deref(),
            Some("snap.a.b.refreshd-0123456789abcdef.scope")
        );
        assert_eq!(
            unit_in("1:name=systemd:/x\n0::/system.slice/snap.a.d.service/inner\n").as_deref(),
            Some("snap.a.d.service")
        );
        assert_eq!(unit_in("0::/refreshd/snap.a\n"), None);
        assert_eq!(unit_in("12:freezer:/refreshd/snap.a\n"), None);
    }

    #[test]
    fn hidepid_from_mountinfo() {
        let line = |mp: &str, fs: &str, opts: &str| {
            format!(
                "22 1 0:21 / {mp} rw,nosuid,nodev,noexec,relatime shared:12 - {fs} proc {opts}\n"
            )
        };
        let cases = [
            (line("/proc", "proc", "rw"), false),
            (line("/proc", "proc", "rw,hidepid=2"), true),
            (line("/proc", "proc", "rw,hidepid=invisible,gid=10"), true),
            (line("/proc", "proc", "rw,hidepid=0"), false),
            (line("/proc", "proc", "rw,hidepid=off"), false),
            (line("/srv/proc", "proc", "rw,hidepid=2"), false),
            (line("/proc", "tmpfs", "rw,hidepid=2"), false),
            // The last mount on /proc is the one seen.
            (
                line("/proc", "proc", "rw,hidepid=2") + &line("/proc", "proc", "rw"),
                false,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(hidepid_in(text.as_bytes()), want, "{text}");
        }
    }

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
        assert_eq!(real_uid_in(status), Some(1000));
        assert_eq!(real_uid_in("Name: x\n"), None);
        // A name with spaces and parens does not shift the fields.
        let stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 12345 1000 100";
        assert_eq!(stat_fields(stat)[0], "S");
        assert_eq!(stat_fields(stat)[11], "7");
        let clock = Clock {
            boot: Some(1_790_000_000),
            ticks: 100,
        };
        assert_eq!(start_ms(stat, &clock), Some(1_790_000_123_450));
        assert_eq!(
            start_ms(
                stat,
                &Clock {
                    boot: None,
                    ..clock
                }
            ),
            None
        );
        assert_eq!(start_ms("garbage", &Clock::read()), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = std::process::id();
        assert_eq!(real_uid(me), Some(nix::unistd::getuid().as_raw()));
        assert!(!argv(me).unwrap().is_empty());
        assert!(!comm(me).unwrap().is_empty());
        let started = started_ms(me, &Clock::read()).expect("a start time");
        let age = jiff::Timestamp::now().as_millisecond() - started;
        assert!((0..3_600_000).contains(&age), "started {started}");
        assert!(pids().unwrap().contains(&me));
        assert!(environ(me).is_some());
        assert!(real_uid(u32::MAX).is_none() && argv(u32::MAX).is_none());
        assert!(String::from_utf8_lossy(&mountinfo().unwrap()).contains(" / "));
        assert_eq!(boot_id().len(), 36);
    }

    #[test]
    fn own_figures_are_read() {
        let p = own();
        assert!(p.cpu_seconds.is_some_and(|c| c >= 0.0), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|r| r > 1024 * 1024), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
    }
}
