//! The contract between refreshd, confine-hook and the release agent (docs/runctl-protocol.md).
//!
//! `no_std` and allocation-free, so the release agent (a `no_std`/`no_main` binary the kernel
//! spawns for every emptied cgroup) can share it with the daemon and the launcher. Everything
//! here is pure: byte-string checks and path pieces written into caller-provided buffers.

#![no_std]
#![deny(unsafe_code)]

mod expand;
pub use expand::expand;

/// The runtime control directory, relative to the root.
pub const RUNCTL_DIR: &str = "run/refreshd/runctl";
/// Where confine-hook must be installed, relative to the root; the launcher derives its root
/// from its own location (`/proc/self/exe`), never from anything its caller controls.
pub const HOOK_PATH: &str = "usr/lib/refreshd/confine-hook";
/// Launch descriptions written by refreshd for confine-hook: `LAUNCH_DIR/INSTANCE/REV/APP`.
pub const LAUNCH_DIR: &str = "var/lib/refreshd/launch";
/// Host-absolute directory (root-owned) where each daemon not running on `/` registers its
/// runctl directory for the release agent: `AGENT_REGISTRY/ID -> ROOT/run/refreshd/runctl`.
pub const AGENT_REGISTRY: &str = "/run/refreshd/agent";
/// The runctl directory of the daemon whose root is `/`.
pub const DEFAULT_RUNCTL: &str = "/run/refreshd/runctl";
/// Taken (flock, exclusive) by a daemon while it reads and writes the freezer's
/// `release_agent`, which is one value for the whole machine: daemons starting and stopping
/// side by side do not undo each other. Root's, mode 0600.
pub const AGENT_LOCK: &str = "/run/refreshd/agent.lock";
/// The release agent's file name: what refreshd installs and registers.
pub const AGENT_NAME: &str = "refresh-release-agent";
/// Compiled into every build of the release agent and looked for by refreshd in the file a
/// `release_agent` names before taking it for its own: a file merely named like the agent is
/// not the agent. The number is the agent protocol's (this contract): builds carrying the same
/// marker serve each other's daemons.
pub const AGENT_MARKER: &[u8] = b"refresh-release-agent: refreshd runctl agent protocol 1";
/// Name of the cgroup parent of the daemon whose root is `/`; others use `refreshd.ID`.
pub const CGROUP_PARENT: &str = "refreshd";
/// In runctl: which backend the daemon tracks with (`v1`, `v1-poll`, `v2`, `none`), one line.
pub const TRACKING_FILE: &str = "tracking";

pub const MAX_SNAP_NAME: usize = 40;
pub const MAX_INSTANCE_KEY: usize = 10;
/// An instance name: snap name, `_`, key.
pub const MAX_INSTANCE_NAME: usize = MAX_SNAP_NAME + 1 + MAX_INSTANCE_KEY;
/// Length of an instance id: 16 lowercase hex digits.
pub const ID_LEN: usize = 16;

/// snapd's snap name rule: lowercase letters, digits and single hyphens, no hyphen at either
/// end, at least one letter, 2 to 40 characters.
pub fn valid_snap_name(b: &[u8]) -> bool {
    if b.len() < 2 || b.len() > MAX_SNAP_NAME {
        return false;
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return false;
    }
    let mut letter = false;
    let mut prev_hyphen = false;
    for &c in b {
        match c {
            b'a'..=b'z' => letter = true,
            b'0'..=b'9' => {}
            b'-' if !prev_hyphen => {}
            _ => return false,
        }
        prev_hyphen = c == b'-';
    }
    letter
}

/// snapd's instance key rule: 1 to 10 lowercase letters and digits.
pub fn valid_instance_key(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_INSTANCE_KEY
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// `NAME` or `NAME_KEY`.
pub fn valid_instance_name(b: &[u8]) -> bool {
    match b.iter().position(|&c| c == b'_') {
        None => valid_snap_name(b),
        Some(i) => valid_snap_name(&b[..i]) && valid_instance_key(&b[i + 1..]),
    }
}

/// Longest app name.
pub const MAX_APP_NAME: usize = 128;

/// snapd's app name rule: `^[A-Za-z0-9](?:-?[A-Za-z0-9])*$`, at most 128 characters.
pub fn valid_app_name(b: &[u8]) -> bool {
    if b.is_empty() || b.len() > MAX_APP_NAME || b[0] == b'-' || b[b.len() - 1] == b'-' {
        return false;
    }
    let mut prev_hyphen = false;
    for &c in b {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => {}
            b'-' if !prev_hyphen => {}
            _ => return false,
        }
        prev_hyphen = c == b'-';
    }
    true
}

/// The id of a daemon's root: FNV-1a 64 of the root path, as 16 lowercase hex digits. The
/// root `/` has no id: its cgroups live under `refreshd` and its runctl dir is
/// [`DEFAULT_RUNCTL`].
pub fn instance_id(root: &[u8]) -> Option<[u8; ID_LEN]> {
    if root == b"/" {
        return None;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in root {
        h ^= u64::from(c);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut out = [0u8; ID_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        let nibble = ((h >> (60 - 4 * i)) & 0xf) as u8;
        *o = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    Some(out)
}

/// Writes the cgroup parent's name for `root` (`refreshd` or `refreshd.ID`) into `buf` and
/// returns it.
pub fn cgroup_parent<'a>(root: &[u8], buf: &'a mut [u8; 9 + 1 + ID_LEN]) -> &'a [u8] {
    let p = CGROUP_PARENT.as_bytes();
    buf[..p.len()].copy_from_slice(p);
    match instance_id(root) {
        None => &buf[..p.len()],
        Some(id) => {
            buf[p.len()] = b'.';
            buf[p.len() + 1..p.len() + 1 + ID_LEN].copy_from_slice(&id);
            &buf[..p.len() + 1 + ID_LEN]
        }
    }
}

/// A marker or lock file in runctl for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// `snap.NAME.running`: processes of NAME may exist (created by confine-hook; removed by
    /// the release agent, or by refreshd once `cgroup.procs` is empty).
    Running,
    /// `snap.NAME.inhibited`: refreshd is in (or, with `refresh-pending-behavior: block`,
    /// approaching) the critical section; launches wait.
    Inhibited,
    /// `snap.NAME.lock`: serializes the launcher's join with refreshd's emptiness check.
    Lock,
}

impl Marker {
    fn suffix(self) -> &'static [u8] {
        match self {
            Marker::Running => b".running",
            Marker::Inhibited => b".inhibited",
            Marker::Lock => b".lock",
        }
    }
}

/// Longest marker file name.
pub const MAX_MARKER: usize = 5 + MAX_INSTANCE_NAME + 10;

/// Writes `snap.NAME.SUFFIX` into `buf`; None when `name` is not a valid instance name.
pub fn marker_name<'a>(name: &[u8], m: Marker, buf: &'a mut [u8; MAX_MARKER]) -> Option<&'a [u8]> {
    if !valid_instance_name(name) {
        return None;
    }
    let parts: [&[u8]; 3] = [b"snap.", name, m.suffix()];
    let mut n = 0;
    for p in parts {
        buf[n..n + p.len()].copy_from_slice(p);
        n += p.len();
    }
    Some(&buf[..n])
}

/// What a release-agent argument names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released<'a> {
    /// The instance id of the daemon's root, or None for the root `/`.
    pub id: Option<&'a [u8]>,
    /// The snap instance whose cgroup emptied.
    pub name: &'a [u8],
}

/// Parses the release agent's argument — the emptied cgroup's path relative to the hierarchy
/// mount — accepting exactly `/refreshd/snap.NAME` and `/refreshd.ID/snap.NAME` with a valid
/// NAME and ID. Anything else (other cgroups, traversal, stray bytes) is None: touch nothing.
pub fn parse_release_path(arg: &[u8]) -> Option<Released<'_>> {
    let rest = arg.strip_prefix(b"/")?;
    let slash = rest.iter().position(|&c| c == b'/')?;
    let (parent, leaf) = (&rest[..slash], &rest[slash + 1..]);
    let id = if parent == CGROUP_PARENT.as_bytes() {
        None
    } else {
        let id = parent.strip_prefix(b"refreshd.")?;
        if id.len() != ID_LEN
            || !id
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        {
            return None;
        }
        Some(id)
    };
    let name = leaf.strip_prefix(b"snap.")?;
    valid_instance_name(name).then_some(Released { id, name })
}

/// The launch description refreshd writes at `LAUNCH_DIR/INSTANCE/REV/APP` for confine-hook:
/// UTF-8 text, one field per line, no field holding a newline (snap.yaml validation rules them
/// out). The first line is the format's version; unknown keys are ignored.
///
/// ```text
/// refreshd-launch 1
/// snap-name hello
/// version 1.0
/// revision x1
/// command bin/hello          program, relative to the revision's directory
/// arg --greeting             zero or more
/// env GREETING=hi $HOME      zero or more: top-level environment, then the app's, in order
/// ```
pub const LAUNCH_MAGIC: &str = "refreshd-launch 1";

/// Beside the launch descriptions of a revision, `LAUNCH_DIR/INSTANCE/REV/DATA_FILE` says how
/// each user's data directory of that revision (`HOME/snap/INSTANCE/REV`) comes to be. App
/// names hold no dot, so this name is never an app's. Written by refreshd's `link` task before
/// `current` points at the revision; read by confine-hook at every launch:
///
/// ```text
/// refreshd-data 1
/// epoch 5f0c9e2a1b3d4c6e     the period this revision became current in: a user's directory
///                            marked with another epoch is from an earlier period (a refresh
///                            that was undone) and is made again
/// from x2                    optional: the revision whose data a user's directory starts as a
///                            copy of (a refresh); absent: a directory that exists is kept as it
///                            is, a missing one starts empty (an install, a revert)
/// ```
pub const DATA_FILE: &str = ".data";
/// First line of [`DATA_FILE`].
pub const DATA_MAGIC: &str = "refreshd-data 1";
/// Longest epoch: lowercase hex digits.
pub const MAX_EPOCH: usize = 32;

/// In a user's `HOME/snap/INSTANCE`: the user's own bookkeeping of their data directories,
/// made and used only as the user. It holds `lock` (flocked while a data directory is made)
/// and one symlink per revision, `REV -> EPOCH`, made once that revision's directory is
/// complete for that epoch. Its name is no revision's, so nothing mistakes it for data.
pub const USER_STATE_DIR: &str = ".refreshd";
/// In a user's `HOME/snap/INSTANCE`: `current -> REV`, the revision the user last ran (as
/// snapd keeps it). Made as the user, only after that revision's data directory is complete.
pub const USER_CURRENT: &str = "current";

/// A revision as refreshd writes it: `N` (store) or `xN` (local), N from 1 with no leading
/// zero, at most 10 digits.
pub fn valid_revision(b: &[u8]) -> bool {
    let digits = b.strip_prefix(b"x").unwrap_or(b);
    !digits.is_empty()
        && digits.len() <= 10
        && digits[0] != b'0'
        && digits.iter().all(u8::is_ascii_digit)
}

/// An epoch: 1 to [`MAX_EPOCH`] lowercase hex digits.
pub fn valid_epoch(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_EPOCH
        && b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// A parsed [`DATA_FILE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSpec<'a> {
    pub epoch: &'a [u8],
    /// The revision to copy users' data from; None: keep what is there.
    pub from: Option<&'a [u8]>,
}

/// Parses a [`DATA_FILE`]; the error says what is wrong with it. Unknown keys are ignored.
pub fn parse_data(text: &[u8]) -> Result<DataSpec<'_>, &'static str> {
    let mut lines = text.split(|&c| c == b'\n');
    if lines.next() != Some(DATA_MAGIC.as_bytes()) {
        return Err("it does not start with \"refreshd-data 1\"");
    }
    let (mut epoch, mut from) = (None, None);
    for line in lines {
        let (key, value) = match line.iter().position(|&c| c == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        match key {
            b"epoch" => {
                if epoch.is_some() || !valid_epoch(value) {
                    return Err("its epoch is missing, repeated or not hex digits");
                }
                epoch = Some(value);
            }
            b"from" => {
                if from.is_some() || !valid_revision(value) {
                    return Err("its from is repeated or not a revision");
                }
                from = Some(value);
            }
            _ => {}
        }
    }
    Ok(DataSpec {
        epoch: epoch.ok_or("it has no epoch")?,
        from,
    })
}

/// Whether systemd is PID 1 (sd_booted(3)): this directory exists only then. In that world a
/// launch goes into a transient scope of a systemd manager (docs/runctl-protocol.md, "The
/// systemd world"), and nothing of ours is made in the cgroup2 tree.
pub const SYSTEMD_BOOTED: &str = "/run/systemd/system";

/// Under RUNCTL: the registry of the scopes launches joined in the systemd world, one root-owned
/// file per unit, named by the unit and holding its cgroup path (relative to the cgroup2 mount).
pub const UNITS_DIR: &str = "units";

/// What tells our scopes from others': `snap.INSTANCE.APP.refreshd-RAND.scope`.
const SCOPE_TAG: &[u8] = b".refreshd-";
/// The random part of a scope's name: hex digits.
pub const SCOPE_RAND_LEN: usize = 16;

/// The transient scope unit a launch of INSTANCE.APP joins: `snap.INSTANCE.APP.refreshd-RAND.scope`
/// (RAND: [`SCOPE_RAND_LEN`] lowercase hex digits, new for every launch, so a name is never
/// reused), written into `buf`. None when a part is invalid.
pub fn scope_unit<'a>(
    instance: &[u8],
    app: &[u8],
    rand: &[u8],
    buf: &'a mut [u8; MAX_SCOPE_UNIT],
) -> Option<&'a [u8]> {
    let hex = rand.len() == SCOPE_RAND_LEN
        && rand
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    if !valid_instance_name(instance) || !valid_app_name(app) || !hex {
        return None;
    }
    let parts: [&[u8]; 7] = [b"snap.", instance, b".", app, SCOPE_TAG, rand, b".scope"];
    let mut n = 0;
    for p in parts {
        buf.get_mut(n..n + p.len())?.copy_from_slice(p);
        n += p.len();
    }
    Some(&buf[..n])
}

/// Longest scope unit name ([`scope_unit`]); systemd's limit is 255.
pub const MAX_SCOPE_UNIT: usize =
    5 + MAX_INSTANCE_NAME + 1 + MAX_APP_NAME + SCOPE_TAG.len() + SCOPE_RAND_LEN + 6;

/// The instance a scope unit of ours belongs to (see [`scope_unit`]); None for any other name.
pub fn scope_instance(unit: &[u8]) -> Option<&[u8]> {
    let rest = unit.strip_prefix(b"snap.")?.strip_suffix(b".scope")?;
    let dot = rest.iter().position(|&c| c == b'.')?;
    let (instance, rest) = (&rest[..dot], &rest[dot..]);
    let tag = rest
        .windows(SCOPE_TAG.len())
        .rposition(|w| w == SCOPE_TAG)?;
    let (app, rand) = (rest.get(1..tag)?, rest.get(tag + SCOPE_TAG.len()..)?);
    let mut buf = [0u8; MAX_SCOPE_UNIT];
    scope_unit(instance, app, rand, &mut buf)
        .is_some()
        .then_some(instance)
}

/// The cgroup hierarchies of a mount table, as found in `/proc/self/mountinfo` — never an
/// assumed layout. Launcher and daemon must agree on them, so both use this one parser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupMounts<'a> {
    /// Mount point (still escaped: see [`unescape`]) of the first cgroup v1 hierarchy with the
    /// freezer controller.
    pub freezer: Option<&'a [u8]>,
    /// Mount point (escaped) of the first cgroup2 hierarchy.
    pub unified: Option<&'a [u8]>,
}

/// Finds the hierarchies in mountinfo text. A line reads
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`.
pub fn cgroup_mounts(text: &[u8]) -> CgroupMounts<'_> {
    let mut m = CgroupMounts::default();
    for line in text.split(|&c| c == b'\n') {
        let mut fields = line.split(|&c| c == b' ');
        let Some(point) = fields.nth(4) else { continue };
        // Optional fields end at a lone "-".
        let mut rest = fields.skip_while(|f| *f != b"-").skip(1);
        let (Some(fstype), Some(_source), Some(opts)) = (rest.next(), rest.next(), rest.next())
        else {
            continue;
        };
        if fstype == b"cgroup"
            && m.freezer.is_none()
            && opts.split(|&c| c == b',').any(|o| o == b"freezer")
        {
            m.freezer = Some(point);
        } else if fstype == b"cgroup2" && m.unified.is_none() {
            m.unified = Some(point);
        }
    }
    m
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...), byte by byte into `out`.
pub fn unescape(raw: &[u8], mut out: impl FnMut(u8)) {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' {
            let d = &raw[i + 1..(i + 4).min(raw.len())];
            if d.len() == 3 && d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                if let Ok(b) = u8::try_from(v) {
                    out(b);
                    i += 4;
                    continue;
                }
            }
        }
        out(raw[i]);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_units() {
        let r = b"0123456789abcdef";
        let mut buf = [0u8; MAX_SCOPE_UNIT];
        let u = scope_unit(b"hello_x", b"say-hi", r, &mut buf).unwrap();
        assert_eq!(u, b"snap.hello_x.say-hi.refreshd-0123456789abcdef.scope");
        assert_eq!(scope_instance(u), Some(&b"hello_x"[..]));
        let (long, app) = ([b'a'; MAX_INSTANCE_NAME], [b'b'; MAX_APP_NAME]);
        let long = [&long[..MAX_SNAP_NAME], b"_", &long[..MAX_INSTANCE_KEY]];
        let (mut i, mut n) = ([0u8; MAX_INSTANCE_NAME], 0);
        for p in long {
            i[n..n + p.len()].copy_from_slice(p);
            n += p.len();
        }
        let u = scope_unit(&i, &app, r, &mut buf).unwrap();
        assert!(u.len() == MAX_SCOPE_UNIT && u.len() <= 255);
        assert_eq!(scope_unit(b"Bad", b"a", r, &mut buf), None);
        assert_eq!(scope_unit(b"a", b"a.b", r, &mut buf), None);
        assert_eq!(scope_unit(b"a", b"b", b"0123", &mut buf), None);
        assert_eq!(scope_unit(b"a", b"b", b"0123456789ABCDEF", &mut buf), None);
        for other in [
            &b"snap.hello.hello.service"[..],
            b"snap.hello.hello-0123456789abcdef.scope",
            b"snap.hello.refreshd-0123456789abcdef.scope",
            b"snap..a.refreshd-0123456789abcdef.scope",
            b"snap.a.b.refreshd-0123456789abcdef.scope/x",
            b"snap.a.b.refreshd-0123456789abcdeg.scope",
            b"run-r1.scope",
            b"",
        ] {
            assert_eq!(scope_instance(other), None, "{other:?}");
        }
    }

    #[test]
    fn names() {
        for ok in ["ab", "hello", "a-b", "x1", "a1-2b", &"a".repeat(40)[..]] {
            assert!(valid_snap_name(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a",
            "A",
            "Hello",
            "-ab",
            "ab-",
            "a--b",
            "123",
            "a_b",
            "a.b",
            "..",
            "a/b",
            &"a".repeat(41)[..],
            "é1",
        ] {
            assert!(!valid_snap_name(bad.as_bytes()), "{bad}");
        }
        assert!(valid_instance_name(b"hello_work1"));
        for bad in [
            "hello_",
            "_work",
            "hello_Work",
            "hello_a_b",
            "hello_abcdefghijk",
        ] {
            assert!(!valid_instance_name(bad.as_bytes()), "{bad}");
        }
        assert!(valid_app_name(b"Hello-2"));
        assert!(!valid_app_name(b"a..b") && !valid_app_name(b"a/b") && !valid_app_name(b""));
    }

    #[test]
    fn ids_and_parents() {
        assert_eq!(instance_id(b"/"), None);
        let a = instance_id(b"/tmp/a").unwrap();
        assert_ne!(Some(a), instance_id(b"/tmp/b"));
        assert!(a
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let mut buf = [0u8; 26];
        assert_eq!(cgroup_parent(b"/", &mut buf), b"refreshd");
        let p = cgroup_parent(b"/tmp/a", &mut buf).to_vec();
        assert_eq!(&p[..9], b"refreshd.");
        assert_eq!(&p[9..], &a);
    }

    #[test]
    fn markers() {
        let mut buf = [0u8; MAX_MARKER];
        assert_eq!(
            marker_name(b"hello", Marker::Running, &mut buf),
            Some(&b"snap.hello.running"[..])
        );
        let long = [b'a'; 40];
        let mut name = [0u8; 51];
        name[..40].copy_from_slice(&long);
        name[40] = b'_';
        name[41..].copy_from_slice(b"0123456789");
        assert!(marker_name(&name, Marker::Inhibited, &mut buf).is_some());
        assert_eq!(marker_name(b"../x", Marker::Lock, &mut buf), None);
    }

    #[test]
    fn mountinfo() {
        let text = b"31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:5 - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 1 0:40 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
garbage line";
        let m = cgroup_mounts(text);
        assert_eq!(m.freezer, Some(&b"/sys/fs/cgroup/freezer"[..]));
        assert_eq!(m.unified, Some(&b"/sys/fs/cgroup/unified"[..]));
        let pure = cgroup_mounts(b"30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate");
        assert_eq!(
            (pure.freezer, pure.unified),
            (None, Some(&b"/sys/fs/cgroup"[..]))
        );
        let mut buf = [0u8; 32];
        let mut n = 0;
        unescape(b"/mnt/with\\040space\\", |b| {
            buf[n] = b;
            n += 1;
        });
        assert_eq!(&buf[..n], b"/mnt/with space\\");
    }

    #[test]
    fn release_paths() {
        let id = instance_id(b"/tmp/r").unwrap();
        let mut arg = [0u8; 64];
        let s = b"/refreshd.";
        arg[..s.len()].copy_from_slice(s);
        arg[s.len()..s.len() + 16].copy_from_slice(&id);
        arg[s.len() + 16..s.len() + 27].copy_from_slice(b"/snap.hello");
        let arg = &arg[..s.len() + 27];
        assert_eq!(
            parse_release_path(arg),
            Some(Released {
                id: Some(&id[..]),
                name: b"hello"
            })
        );
        assert_eq!(
            parse_release_path(b"/refreshd/snap.hello_k1"),
            Some(Released {
                id: None,
                name: b"hello_k1"
            })
        );
        let long = [b'x'; 5000];
        let hostile: [&[u8]; 16] = [
            b"",
            b"/",
            b"../x",
            b"/refreshd/snap.",
            b"/refreshd/snap.x/../../etc",
            b"/refreshd/../snap.hello",
            b"/refreshd/snap.Hello",
            b"/refreshd/x/snap.hello",
            b"refreshd/snap.hello",
            b"/refreshd.zz/snap.hello",
            b"/refreshd.0123456789abcdeF/snap.hello",
            b"/refreshd/snap.hello/",
            b"/refreshd/snap.hel\xfflo",
            b"/other/snap.hello",
            b"/refreshd/snap.hello\n",
            &long,
        ];
        for h in hostile {
            assert_eq!(parse_release_path(h), None, "{:?}", core::str::from_utf8(h));
        }
    }

    #[test]
    fn data_files() {
        let d = parse_data(b"refreshd-data 1\nepoch 0a1b\nfrom x2\nlater key\n").unwrap();
        assert_eq!(
            d,
            DataSpec {
                epoch: b"0a1b",
                from: Some(b"x2")
            }
        );
        let d = parse_data(b"refreshd-data 1\nepoch ff\n").unwrap();
        assert_eq!(d.from, None);
        let bad: [&[u8]; 9] = [
            b"",
            b"refreshd-data 2\nepoch ff\n",
            b"refreshd-data 1\n",
            b"refreshd-data 1\nepoch FF\n",
            b"refreshd-data 1\nepoch ff\nepoch ee\n",
            b"refreshd-data 1\nepoch ../x\n",
            b"refreshd-data 1\nepoch ff\nfrom ../../etc\n",
            b"refreshd-data 1\nepoch ff\nfrom 01\n",
            b"refreshd-data 1\nepoch 0123456789abcdef0123456789abcdef0\n",
        ];
        for b in bad {
            assert!(parse_data(b).is_err(), "{:?}", core::str::from_utf8(b));
        }
        for ok in ["1", "x1", "x1234567890", "42"] {
            assert!(valid_revision(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "x",
            "0",
            "x01",
            "12345678901",
            "1a",
            "current",
            ".refreshd",
        ] {
            assert!(!valid_revision(bad.as_bytes()), "{bad}");
        }
    }
}
