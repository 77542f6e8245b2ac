//! The command line: which app to launch, and the caller's arguments for it.
//!
//! Two forms:
//! - through a launcher symlink `snap/bin/NAME` or `snap/bin/NAME.APP`: the name is the
//!   basename of `argv[0]` and every other argument belongs to the app;
//! - explicitly: `confine-hook [--command=stop] NAME[.APP] [-- ARGS...]` when `argv[0]`'s
//!   basename is `confine-hook` (so a snap named `confine-hook` can only be launched this way).
//!   `--command=stop` runs the app's `stop-command` instead (what a service unit's `ExecStop=`
//!   calls);
//! - `confine-hook --prepare-data NAME`: makes the caller's data directory of the current
//!   revision ready, as a launch would, and starts nothing (what refreshd runs as each user
//!   after a refresh).
//!
//! `NAME` is an instance name (`snap` or `snap_key`); a bare `NAME` launches the app named like
//! the snap (instance `foo_bar` → app `foo`). Everything is checked with the runctl rules
//! before it is used in any path.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use refreshd_runctl::{valid_app_name, valid_instance_name};

use crate::error::{fail, show, Result};

/// The basename under which the launcher is its own command.
pub const SELF_NAME: &[u8] = b"confine-hook";

const USAGE: &str = "usage: confine-hook [--command=stop] NAME[.APP] [-- ARGS...], or \
                     confine-hook --prepare-data NAME (or run a launcher in snap/bin)";

/// What to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The instance name: `NAME` or `NAME_KEY`.
    pub instance: Vec<u8>,
    /// The app within the snap.
    pub app: Vec<u8>,
    /// The caller's arguments, appended after the launch description's.
    pub args: Vec<OsString>,
    /// Run the app's stop-command rather than the app.
    pub stop: bool,
    /// Only make the caller's data directory of the current revision ready.
    pub prepare_data: bool,
}

impl Target {
    /// The snap's name: the instance name without its key.
    pub fn snap_name(&self) -> &[u8] {
        split_instance(&self.instance).0
    }

    /// The instance key, if this is a parallel instance.
    pub fn instance_key(&self) -> Option<&[u8]> {
        split_instance(&self.instance).1
    }
}

fn split_instance(instance: &[u8]) -> (&[u8], Option<&[u8]>) {
    match instance.iter().position(|&c| c == b'_') {
        None => (instance, None),
        Some(i) => (&instance[..i], Some(&instance[i + 1..])),
    }
}

/// Parses `NAME` or `NAME.APP` into (instance, app); None when either part is invalid.
pub fn parse_name(b: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (instance, app) = match b.iter().position(|&c| c == b'.') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, split_instance(b).0),
    };
    (valid_instance_name(instance) && valid_app_name(app))
        .then(|| (instance.to_vec(), app.to_vec()))
}

/// Parses the whole command line (`argv[0]` included).
pub fn parse(argv: &[OsString]) -> Result<Target> {
    let Some(argv0) = argv.first() else {
        return Err(fail!("started without argv[0]; {USAGE}"));
    };
    let argv0 = argv0.as_bytes();
    if argv0.split(|&c| c == b'/').any(|part| part == b"..") {
        return Err(fail!(
            "refusing to launch through {:?}: it contains a \"..\" component; run the launcher \
             by its name or by its path in snap/bin",
            show(argv0)
        ));
    }
    let base = argv0.rsplit(|&c| c == b'/').next().unwrap_or(argv0);
    let mut stop = false;
    let mut prepare_data = false;
    let (name, args) = if base == SELF_NAME {
        let mut first = 1;
        if argv.get(1).is_some_and(|a| a == "--command=stop") {
            stop = true;
            first = 2;
        } else if argv.get(1).is_some_and(|a| a == "--prepare-data") {
            prepare_data = true;
            first = 2;
            if argv.len() != 3 {
                return Err(fail!("--prepare-data takes exactly one snap name; {USAGE}"));
            }
        }
        let Some(name) = argv.get(first) else {
            return Err(fail!("no app named; {USAGE}"));
        };
        let args = match argv.get(first + 1) {
            None => &argv[first + 1..],
            Some(sep) if sep == "--" => &argv[first + 2..],
            Some(other) => {
                return Err(fail!(
                    "expected \"--\" before the app's arguments, found {:?}; {USAGE}",
                    other
                ))
            }
        };
        (name.as_bytes(), args)
    } else {
        (base, &argv[1..])
    };
    if prepare_data && name.contains(&b'.') {
        return Err(fail!(
            "--prepare-data takes a snap name, not an app ({:?}); {USAGE}",
            show(&name[..name.len().min(80)])
        ));
    }
    let (instance, app) = parse_name(name).ok_or_else(|| {
        fail!(
            "{:?} is not a valid app name: expected NAME or NAME.APP with a snap name (lowercase \
             letters, digits, hyphens), an optional _KEY, and an app name (letters, digits, \
             hyphens)",
            show(&name[..name.len().min(80)])
        )
    })?;
    Ok(Target {
        instance,
        app,
        args: args.to_vec(),
        stop,
        prepare_data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[derive(Debug, PartialEq)]
    enum Want {
        Launch(&'static str, &'static str, &'static [&'static str]),
        Reject,
    }
    use Want::*;

    fn os(b: &[u8]) -> OsString {
        OsString::from_vec(b.to_vec())
    }

    fn run(argv: &[&[u8]]) -> Want {
        let argv: Vec<OsString> = argv.iter().map(|a| os(a)).collect();
        match parse(&argv) {
            Err(_) => Reject,
            Ok(t) => {
                // Leak for the table's 'static strings: fine in a test.
                let i: &'static str = String::from_utf8(t.instance).unwrap().leak();
                let a: &'static str = String::from_utf8(t.app).unwrap().leak();
                let args: Vec<&'static str> = t
                    .args
                    .into_iter()
                    .map(|s| &*s.into_string().unwrap().leak())
                    .collect();
                Launch(i, a, args.leak())
            }
        }
    }

    /// Input, and the (instance, app) it names or None for a rejection.
    type NameCase<'a> = (&'a [u8], Option<(&'a str, &'a str)>);

    #[test]
    fn names() {
        let long = "a".repeat(5000);
        let table: &[NameCase] = &[
            (b"hello", Some(("hello", "hello"))),
            (b"hello.world", Some(("hello", "world"))),
            (b"hello_key.app", Some(("hello_key", "app"))),
            (b"hello_key", Some(("hello_key", "hello"))),
            (b"hello.World-2", Some(("hello", "World-2"))),
            (b"snap.x/../../etc", None),
            (b"Hello", None),
            (b"..", None),
            (b".", None),
            (b"a/b", None),
            (b"", None),
            (b"hello.", None),
            (b".hello", None),
            (b"hello.a.b", None),
            (b"hello.a/b", None),
            (b"hello_.app", None),
            (b"hello_KEY", None),
            (b"hello.-x", None),
            (b"hello\n", None),
            (b"hel\xfflo", None),
            (b"hello.w\xc3\xa9", None),
            (long.as_bytes(), None),
        ];
        for (input, want) in table {
            let got = parse_name(input);
            let want = want.map(|(i, a)| (i.as_bytes().to_vec(), a.as_bytes().to_vec()));
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn dispatch() {
        let long = format!("/snap/bin/{}", "a".repeat(5000));
        let table: &[(&[&[u8]], Want)] = &[
            // Launcher symlinks: basename of argv[0]; everything else is the app's.
            (&[b"/snap/bin/hello"], Launch("hello", "hello", &[])),
            (
                &[b"hello", b"-x", b"--", b"y"],
                Launch("hello", "hello", &["-x", "--", "y"]),
            ),
            (
                &[b"/r/snap/bin/hello.world", b"a"],
                Launch("hello", "world", &["a"]),
            ),
            (&[b"hello_key.app"], Launch("hello_key", "app", &[])),
            (&[b"/snap/bin/Hello"], Reject),
            (&[b"/snap/bin/.."], Reject),
            (&[b"snap.x/../../etc"], Reject),
            (&[b"/snap/bin/../../etc/hello"], Reject),
            (&[b"/snap/bin/"], Reject),
            (&[b""], Reject),
            (&[], Reject),
            (&[b"/snap/bin/hel\xfflo"], Reject),
            (&[long.as_bytes()], Reject),
            // Explicit form.
            (
                &[b"/usr/lib/refreshd/confine-hook", b"hello.world"],
                Launch("hello", "world", &[]),
            ),
            (
                &[b"confine-hook", b"hello", b"--"],
                Launch("hello", "hello", &[]),
            ),
            (
                &[b"confine-hook", b"hello_k1.a", b"--", b"--", b"x"],
                Launch("hello_k1", "a", &["--", "x"]),
            ),
            (&[b"confine-hook", b"hello", b"x"], Reject),
            (&[b"confine-hook"], Reject),
            (&[b"confine-hook", b"--"], Reject),
            (&[b"confine-hook", b"snap.x/../../etc", b"--"], Reject),
            (&[b"confine-hook", b"a/b"], Reject),
            (&[b"confine-hook", b".."], Reject),
            (&[b"confine-hook", b""], Reject),
            (&[b"confine-hook", b"Hello"], Reject),
            (&[b"confine-hook", b"hel\xfflo"], Reject),
            (&[b"confine-hook", long.as_bytes()], Reject),
        ];
        for (argv, want) in table {
            assert_eq!(&run(argv), want, "{argv:?}");
        }
    }

    #[test]
    fn stop_command_form() {
        let argv = |a: &[&[u8]]| a.iter().map(|b| os(b)).collect::<Vec<_>>();
        let t = parse(&argv(&[b"confine-hook", b"--command=stop", b"svc.d"])).unwrap();
        assert!(t.stop);
        assert_eq!(
            (t.instance.as_slice(), t.app.as_slice()),
            (&b"svc"[..], &b"d"[..])
        );
        let t = parse(&argv(&[
            b"confine-hook",
            b"--command=stop",
            b"svc.d",
            b"--",
            b"x",
        ]))
        .unwrap();
        assert_eq!(t.args, [os(b"x")]);
        // Only in the explicit form, only spelled exactly so, never from a launcher.
        assert!(
            !parse(&argv(&[b"/snap/bin/svc.d", b"--command=stop"]))
                .unwrap()
                .stop
        );
        assert!(parse(&argv(&[b"confine-hook", b"--command=stop"])).is_err());
        assert!(parse(&argv(&[b"confine-hook", b"--command=start", b"svc.d"])).is_err());
        assert!(!parse(&argv(&[b"confine-hook", b"svc.d"])).unwrap().stop);
    }

    #[test]
    fn instance_parts() {
        let t = parse(&[os(b"hello_k1.app")]).unwrap();
        assert_eq!(t.snap_name(), b"hello");
        assert_eq!(t.instance_key(), Some(&b"k1"[..]));
        let t = parse(&[os(b"hello")]).unwrap();
        assert_eq!(t.instance_key(), None);
    }
}
