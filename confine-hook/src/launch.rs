//! The launch description refreshd writes for each app: `LAUNCH_DIR/INSTANCE/REV/APP`, in the
//! line format documented on `refreshd_runctl::LAUNCH_MAGIC`.

use std::io::Read;

use refreshd_runctl::{valid_snap_name, DATA_FILE, LAUNCH_DIR, LAUNCH_MAGIC};

use crate::error::{fail, show, Error, Result};
use crate::root::{valid_revision, Dir, Root};

/// Largest launch description accepted.
pub const MAX_SIZE: usize = 64 * 1024;

/// A parsed launch description.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Launch {
    pub snap_name: Option<String>,
    pub version: Option<String>,
    pub revision: Option<String>,
    /// The program, relative to the revision's directory.
    pub command: String,
    pub args: Vec<String>,
    /// `KEY=VALUE` entries in order; VALUE is expanded against the environment at launch.
    pub env: Vec<(String, String)>,
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_name(s: &[u8]) -> bool {
    !s.is_empty()
        && !s[0].is_ascii_digit()
        && s.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A command relative to the revision's directory that cannot leave it by name (the rule
/// refreshd's snap.yaml validation applies: not absolute, no `..` component).
fn valid_command(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('/') && s.split('/').all(|p| p != "..")
}

fn set_once(slot: &mut Option<String>, key: &str, value: &str) -> std::result::Result<(), String> {
    if slot.is_some() {
        return Err(format!("{key} is given twice"));
    }
    *slot = Some(value.to_owned());
    Ok(())
}

/// Parses a launch description; the error says what is wrong with it (without its path).
pub fn parse(text: &[u8]) -> std::result::Result<Launch, String> {
    if text.len() > MAX_SIZE {
        return Err(format!("it is larger than {MAX_SIZE} bytes"));
    }
    if text.contains(&0) {
        return Err("it contains a NUL byte".into());
    }
    let text = std::str::from_utf8(text).map_err(|_| "it is not UTF-8 text".to_string())?;
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    if first != LAUNCH_MAGIC {
        return Err(match first.strip_prefix("refreshd-launch ") {
            Some(v) => format!(
                "it has format version {v:?} but this confine-hook understands {LAUNCH_MAGIC:?}; \
                 install a confine-hook matching refreshd"
            ),
            None => format!("it does not start with {LAUNCH_MAGIC:?}"),
        });
    }
    let mut l = Launch::default();
    let mut command = None;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "snap-name" => {
                if !valid_snap_name(value.as_bytes()) {
                    return Err(format!("invalid snap-name {value:?}"));
                }
                set_once(&mut l.snap_name, key, value)?;
            }
            "version" => set_once(&mut l.version, key, value)?,
            "revision" => {
                if !valid_revision(value.as_bytes()) {
                    return Err(format!("invalid revision {value:?}"));
                }
                set_once(&mut l.revision, key, value)?;
            }
            "command" => {
                if !valid_command(value) {
                    return Err(format!(
                        "invalid command {value:?}: it must be a path relative to the \
                         revision's directory without \"..\" components"
                    ));
                }
                set_once(&mut command, key, value)?;
            }
            "arg" => l.args.push(value.to_owned()),
            "env" => {
                let Some((k, v)) = value.split_once('=') else {
                    return Err(format!("env entry {value:?} is not KEY=VALUE"));
                };
                if !valid_env_name(k.as_bytes()) {
                    return Err(format!("env entry {value:?} has an invalid name"));
                }
                l.env.push((k.to_owned(), v.to_owned()));
            }
            // Newer refreshd versions may add keys; they must not break older launchers.
            _ => {}
        }
    }
    l.command = command.ok_or("it names no command")?;
    Ok(l)
}

/// `ROOT/LAUNCH_DIR/INSTANCE/REV`, every directory on the way checked to be root's: where the
/// revision's launch descriptions and its data file are.
pub struct RevisionDir {
    dir: Dir,
    instance: Vec<u8>,
    rev: Vec<u8>,
}

impl RevisionDir {
    pub fn open(root: &Root, instance: &[u8], rev: &[u8]) -> Result<RevisionDir> {
        let not_installed = |path: &[u8]| -> Error {
            fail!(
                "{} has no launch description {}; reinstall the snap or restart refreshd so it \
                 writes it",
                show(instance),
                show(path)
            )
        };
        let mut dir: Dir = root.dir.open_path(LAUNCH_DIR)?;
        for part in [instance, rev] {
            dir = match dir.try_open(part)? {
                Some(d) => d,
                None => return Err(not_installed(&dir.child_path(part))),
            };
        }
        Ok(RevisionDir {
            dir,
            instance: instance.to_vec(),
            rev: rev.to_vec(),
        })
    }

    /// Reads a root-owned file of the revision's, at most `MAX_SIZE` bytes; None if absent.
    fn read_file(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let path = self.dir.child_path(name);
        let Some((file, st)) = self.dir.open_trusted_file(name)? else {
            return Ok(None);
        };
        if st.size > MAX_SIZE as i64 {
            return Err(fail!(
                "refusing {}: it is larger than {MAX_SIZE} bytes",
                show(&path)
            ));
        }
        let mut text = Vec::new();
        file.take(MAX_SIZE as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|e| fail!("cannot read {}: {e}", show(&path)))?;
        Ok(Some(text))
    }

    /// The launch description of `app` (or `APP.stop`).
    pub fn read_app(&self, app: &[u8]) -> Result<Launch> {
        let path = self.dir.child_path(app);
        let Some(text) = self.read_file(app)? else {
            return Err(fail!(
                "{} has no app {:?} in revision {} ({} is missing)",
                show(&self.instance),
                show(app),
                show(&self.rev),
                show(&path)
            ));
        };
        parse(&text).map_err(|why| fail!("refusing the launch description {}: {why}", show(&path)))
    }

    /// How users' data directories of this revision are made ([`refreshd_runctl::DATA_FILE`]).
    /// None when refreshd has not written one (a revision linked by an older refreshd): users'
    /// directories are then kept as they are, or made empty.
    pub fn read_data(&self) -> Result<Option<DataSpec>> {
        let name = DATA_FILE.as_bytes();
        let Some(text) = self.read_file(name)? else {
            return Ok(None);
        };
        let d = refreshd_runctl::parse_data(&text).map_err(|why| {
            fail!(
                "refusing {}: {why}; restart refreshd so it rewrites it",
                show(&self.dir.child_path(name))
            )
        })?;
        Ok(Some(DataSpec {
            epoch: d.epoch.to_vec(),
            from: d.from.map(<[u8]>::to_vec),
        }))
    }
}

/// How a revision's users' data directories are made (see `refreshd_runctl::DATA_FILE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSpec {
    pub epoch: Vec<u8>,
    /// Copy from this revision's directory; None: keep what is there.
    pub from: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "refreshd-launch 1
snap-name hello
version 1.0 beta
revision x1
command bin/hello
arg --greeting
arg
arg two words
env GREETING=hi $HOME
env EMPTY=
future-key some value

";

    #[test]
    fn good() {
        let l = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(
            l,
            Launch {
                snap_name: Some("hello".into()),
                version: Some("1.0 beta".into()),
                revision: Some("x1".into()),
                command: "bin/hello".into(),
                args: vec!["--greeting".into(), "".into(), "two words".into()],
                env: vec![
                    ("GREETING".into(), "hi $HOME".into()),
                    ("EMPTY".into(), "".into())
                ],
            }
        );
        let dotted = parse(b"refreshd-launch 1\ncommand ./bin//app").unwrap();
        assert_eq!(dotted.command, "./bin//app");
        let minimal = parse(b"refreshd-launch 1\ncommand app").unwrap();
        assert_eq!(minimal.command, "app");
        assert_eq!(minimal.snap_name, None);
    }

    #[test]
    fn bad() {
        let big = format!(
            "{LAUNCH_MAGIC}\ncommand x\n{}",
            "arg x\n".repeat(MAX_SIZE / 6 + 1)
        );
        let table: &[(&str, &str)] = &[
            ("", "does not start"),
            ("refreshd-launch 2\ncommand x\n", "format version \"2\""),
            ("refreshd-launch 1 \ncommand x\n", "format version \"1 \""),
            ("REFRESHD-LAUNCH 1\ncommand x\n", "does not start"),
            ("#!/bin/sh\nrm -rf /\n", "does not start"),
            ("refreshd-launch 1\nsnap-name hello\n", "no command"),
            ("refreshd-launch 1\ncommand\n", "invalid command"),
            ("refreshd-launch 1\ncommand /bin/sh\n", "invalid command"),
            (
                "refreshd-launch 1\ncommand ../../bin/sh\n",
                "invalid command",
            ),
            (
                "refreshd-launch 1\ncommand bin/../../x\n",
                "invalid command",
            ),
            ("refreshd-launch 1\ncommand ..\n", "invalid command"),
            ("refreshd-launch 1\ncommand a\ncommand b\n", "twice"),
            (
                "refreshd-launch 1\ncommand a\nsnap-name Hello\n",
                "invalid snap-name",
            ),
            (
                "refreshd-launch 1\ncommand a\nrevision ../1\n",
                "invalid revision",
            ),
            (
                "refreshd-launch 1\ncommand a\nenv NOEQUALS\n",
                "not KEY=VALUE",
            ),
            ("refreshd-launch 1\ncommand a\nenv 1X=y\n", "invalid name"),
            ("refreshd-launch 1\ncommand a\nenv A-B=y\n", "invalid name"),
            ("refreshd-launch 1\ncommand a\0b\n", "NUL"),
            (&big, "larger than"),
        ];
        for (text, want) in table {
            let err = parse(text.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(parse(b"refreshd-launch 1\ncommand \xff\n")
            .unwrap_err()
            .contains("UTF-8"));
    }

    #[test]
    fn env_names() {
        for ok in ["A", "_", "a_1", "LD_PRELOAD"] {
            assert!(valid_env_name(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A=B", "A B", "é"] {
            assert!(!valid_env_name(bad.as_bytes()), "{bad}");
        }
    }
}
