//! The app's environment, built by allowlist: a few terminal, locale and session variables
//! from the caller, a fixed PATH, the user's identity, the snap variables, then the launch
//! description's entries with `$VAR` / `${VAR}` expansion.

use std::ffi::CString;

use crate::root::join;

/// The only PATH an app starts with.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest caller value passed on; longer ones are dropped.
pub const MAX_VALUE: usize = 4096;

/// Caller variables passed on by exact name (plus `LC_*`, see [`allowed`]).
const ALLOWED: &[&str] = &[
    "TERM",
    "COLORTERM",
    "LANG",
    "LANGUAGE",
    "TZ",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "XDG_RUNTIME_DIR",
    "XDG_SESSION_TYPE",
    "XDG_CURRENT_DESKTOP",
    "DBUS_SESSION_BUS_ADDRESS",
];

/// Whether a caller variable may reach the app.
pub fn allowed(name: &[u8]) -> bool {
    if let Some(rest) = name.strip_prefix(b"LC_") {
        return !rest.is_empty() && rest.iter().all(|&c| c.is_ascii_uppercase() || c == b'_');
    }
    ALLOWED.iter().any(|a| a.as_bytes() == name)
}

/// An ordered environment; setting an existing name replaces its value in place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Env(Vec<(Vec<u8>, Vec<u8>)>);

impl Env {
    /// The allowlisted part of the caller's environment (in the caller's order).
    pub fn from_caller(vars: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Env {
        let mut env = Env::default();
        for (k, v) in vars {
            if allowed(&k) && v.len() <= MAX_VALUE && !v.contains(&0) {
                env.set(&k, &v);
            }
        }
        env
    }

    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value.to_vec(),
            None => self.0.push((name.to_vec(), value.to_vec())),
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    #[cfg(test)]
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|(k, _)| k.as_slice())
    }

    /// `NAME=VALUE` strings for execve (values never hold NUL: callers' are filtered, ours
    /// come from NUL-free sources).
    pub fn to_cstrings(&self) -> Vec<CString> {
        self.0
            .iter()
            .filter_map(|(k, v)| CString::new([k.as_slice(), b"=", v.as_slice()].concat()).ok())
            .collect()
    }

    /// Expands `$NAME` and `${NAME}` in `value` against this environment (unknown: empty), by
    /// the rules the daemon uses for hooks too ([`refreshd_runctl::expand`]).
    pub fn expand(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len());
        refreshd_runctl::expand(
            value,
            |name| self.get(name),
            |piece| out.extend_from_slice(piece),
        );
        out
    }
}

/// What the launch knows about the snap and the user, to build the snap variables from.
pub struct SnapVars<'a> {
    pub root: &'a [u8],
    pub instance: &'a [u8],
    pub snap_name: &'a [u8],
    pub instance_key: Option<&'a [u8]>,
    pub revision: &'a [u8],
    pub version: &'a [u8],
    /// The user's login name (passwd).
    pub user: &'a [u8],
    /// The user's home re-rooted under the root (`ROOT + passwd home`).
    pub home: &'a [u8],
}

impl SnapVars<'_> {
    fn user_dir(&self, leaf: &[u8]) -> Vec<u8> {
        join(self.home, &[b"snap/", self.instance, b"/", leaf].concat())
    }

    /// `SNAP_USER_DATA`: `HOME/snap/INSTANCE/REV`.
    pub fn user_data(&self) -> Vec<u8> {
        self.user_dir(self.revision)
    }

    /// `SNAP_USER_COMMON`: `HOME/snap/INSTANCE/common`.
    pub fn user_common(&self) -> Vec<u8> {
        self.user_dir(b"common")
    }
}

/// `ROOT + HOME`: the passwd home re-rooted under the root (just HOME for the root `/`).
pub fn reroot_home(root: &[u8], home: &[u8]) -> Vec<u8> {
    let home = match home.iter().rposition(|&c| c != b'/') {
        Some(i) => &home[..=i],
        None => b"",
    };
    if home.is_empty() {
        return root.to_vec();
    }
    if root == b"/" {
        return home.to_vec();
    }
    let home = home.strip_prefix(b"/").unwrap_or(home);
    join(root, home)
}

/// The whole environment: allowlisted caller variables, PATH, USER/LOGNAME, the snap
/// variables, HOME, then the launch description's entries (expanded, in order).
pub fn build(caller: Env, s: &SnapVars<'_>, launch_env: &[(String, String)]) -> Env {
    let mut env = caller;
    let rev_dir =
        |base: &str, leaf: &[u8]| join(s.root, &[base.as_bytes(), s.instance, b"/", leaf].concat());
    env.set(b"PATH", PATH.as_bytes());
    env.set(b"USER", s.user);
    env.set(b"LOGNAME", s.user);
    env.set(b"SNAP", &rev_dir("snap/", s.revision));
    env.set(b"SNAP_NAME", s.snap_name);
    env.set(b"SNAP_INSTANCE_NAME", s.instance);
    if let Some(key) = s.instance_key {
        env.set(b"SNAP_INSTANCE_KEY", key);
    }
    env.set(b"SNAP_REVISION", s.revision);
    env.set(b"SNAP_VERSION", s.version);
    env.set(b"SNAP_DATA", &rev_dir("var/snap/", s.revision));
    env.set(b"SNAP_COMMON", &rev_dir("var/snap/", b"common"));
    env.set(b"SNAP_USER_DATA", &s.user_data());
    env.set(b"SNAP_USER_COMMON", &s.user_common());
    env.set(b"HOME", &s.user_data());
    for (k, v) in launch_env {
        let value = env.expand(v.as_bytes());
        env.set(k.as_bytes(), &value);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_caller(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
        )
    }

    #[test]
    fn allowlist() {
        let table: &[(&str, bool)] = &[
            ("TERM", true),
            ("COLORTERM", true),
            ("LANG", true),
            ("LANGUAGE", true),
            ("LC_ALL", true),
            ("LC_MESSAGES", true),
            ("LC_", false),
            ("LC_x", false),
            ("LC_A-B", false),
            ("TZ", true),
            ("DISPLAY", true),
            ("WAYLAND_DISPLAY", true),
            ("XAUTHORITY", true),
            ("XDG_RUNTIME_DIR", true),
            ("XDG_SESSION_TYPE", true),
            ("XDG_CURRENT_DESKTOP", true),
            ("DBUS_SESSION_BUS_ADDRESS", true),
            ("LD_PRELOAD", false),
            ("LD_LIBRARY_PATH", false),
            ("LD_AUDIT", false),
            ("PATH", false),
            ("IFS", false),
            ("HOME", false),
            ("SHELL", false),
            ("BASH_ENV", false),
            ("ENV", false),
            ("PYTHONPATH", false),
            ("GCONV_PATH", false),
            ("SNAP", false),
            ("term", false),
            ("TERM ", false),
            ("", false),
        ];
        for (name, ok) in table {
            assert_eq!(allowed(name.as_bytes()), *ok, "{name}");
        }
        let long = "x".repeat(MAX_VALUE + 1);
        let e = env(&[
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("TERM", "xterm"),
            ("LD_LIBRARY_PATH", "/tmp"),
            ("PATH", "/tmp/evil"),
            ("IFS", "/"),
            ("LANG", &long),
            ("LC_ALL", "C.UTF-8"),
            ("TERM", "vt100"),
        ]);
        assert_eq!(e.names().collect::<Vec<_>>(), vec![&b"TERM"[..], b"LC_ALL"]);
        assert_eq!(e.get(b"TERM"), Some(&b"vt100"[..]));
    }

    #[test]
    fn expansion() {
        let e = env(&[("TERM", "xterm"), ("LANG", "C")]);
        let table: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("$TERM", "xterm"),
            ("${TERM}", "xterm"),
            ("a${TERM}b", "axtermb"),
            ("$TERM-x", "xterm-x"),
            ("$TERMx", ""),
            ("${TERM}x", "xtermx"),
            ("$LANG:$TERM", "C:xterm"),
            ("$UNKNOWN", ""),
            ("${UNKNOWN}/x", "/x"),
            ("$", "$"),
            ("a$", "a$"),
            ("$$", "$$"),
            ("$1", "$1"),
            ("${", "${"),
            ("${TERM", "${TERM"),
            ("${}", "${}"),
            ("${1A}", "${1A}"),
            ("${A B}", "${A B}"),
            ("$-", "$-"),
            ("é$TERM", "éxterm"),
        ];
        for (input, want) in table {
            assert_eq!(
                String::from_utf8(e.expand(input.as_bytes())).unwrap(),
                *want,
                "{input}"
            );
        }
    }

    #[test]
    fn homes() {
        assert_eq!(reroot_home(b"/", b"/home/u"), b"/home/u");
        assert_eq!(reroot_home(b"/", b"/home/u/"), b"/home/u");
        assert_eq!(reroot_home(b"/tmp/r", b"/home/u"), b"/tmp/r/home/u");
        assert_eq!(reroot_home(b"/tmp/r", b"/root"), b"/tmp/r/root");
        assert_eq!(reroot_home(b"/tmp/r", b"/"), b"/tmp/r");
        assert_eq!(reroot_home(b"/", b"/"), b"/");
    }

    #[test]
    fn whole_environment() {
        let caller = env(&[("TERM", "xterm"), ("LD_PRELOAD", "x"), ("HOME", "/evil")]);
        let s = SnapVars {
            root: b"/tmp/r",
            instance: b"hello_k",
            snap_name: b"hello",
            instance_key: Some(b"k"),
            revision: b"x1",
            version: b"1.0",
            user: b"alice",
            home: b"/tmp/r/home/alice",
        };
        let launch = vec![
            ("GREETING".to_string(), "hi $USER in ${SNAP}".to_string()),
            ("PATH".to_string(), "$SNAP/bin:$PATH".to_string()),
            ("ECHO".to_string(), "$GREETING!".to_string()),
        ];
        let e = build(caller, &s, &launch);
        let want: &[(&str, &str)] = &[
            ("TERM", "xterm"),
            ("PATH", "/tmp/r/snap/hello_k/x1/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            ("USER", "alice"),
            ("LOGNAME", "alice"),
            ("SNAP", "/tmp/r/snap/hello_k/x1"),
            ("SNAP_NAME", "hello"),
            ("SNAP_INSTANCE_NAME", "hello_k"),
            ("SNAP_INSTANCE_KEY", "k"),
            ("SNAP_REVISION", "x1"),
            ("SNAP_VERSION", "1.0"),
            ("SNAP_DATA", "/tmp/r/var/snap/hello_k/x1"),
            ("SNAP_COMMON", "/tmp/r/var/snap/hello_k/common"),
            ("SNAP_USER_DATA", "/tmp/r/home/alice/snap/hello_k/x1"),
            ("SNAP_USER_COMMON", "/tmp/r/home/alice/snap/hello_k/common"),
            ("HOME", "/tmp/r/home/alice/snap/hello_k/x1"),
            ("GREETING", "hi alice in /tmp/r/snap/hello_k/x1"),
            ("ECHO", "hi alice in /tmp/r/snap/hello_k/x1!"),
        ];
        let got: Vec<(String, String)> = e.0.iter().map(|(k, v)| (show(k), show(v))).collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        // Root `/`: no doubled slashes; no key, no SNAP_INSTANCE_KEY.
        let s = SnapVars {
            root: b"/",
            instance: b"hello",
            instance_key: None,
            home: b"/root",
            ..s
        };
        let e = build(Env::default(), &s, &[]);
        assert_eq!(e.get(b"SNAP"), Some(&b"/snap/hello/x1"[..]));
        assert_eq!(e.get(b"HOME"), Some(&b"/root/snap/hello/x1"[..]));
        assert_eq!(e.get(b"SNAP_INSTANCE_KEY"), None);
    }

    fn show(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }
}
