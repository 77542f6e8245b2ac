//! What refreshd reads of the kernel's /proc about the machine as a whole.

/// Whether /proc hides other users' processes (`hidepid`): then what refreshd shows of a
/// process is no more than a user could see for themselves.
pub fn hidepid() -> bool {
    hidepid_in(&std::fs::read("/proc/self/mountinfo").unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
