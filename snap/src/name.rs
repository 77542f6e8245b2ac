//! snapd's naming rules: snap names, instance keys, app and hook names, revisions.
//!
//! Names end up in paths (`/snap/NAME/REV`), unit names (`snap.NAME.APP.service`) and error
//! messages, so every check here is an allowlist and every error quotes the input escaped and
//! truncated.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::text::quote;

/// The longest snap name snapd accepts.
pub const MAX_SNAP_NAME_LEN: usize = 40;
/// The longest instance key snapd accepts.
pub const MAX_INSTANCE_KEY_LEN: usize = 10;
/// Project limit on app and hook names (snapd has none). It keeps
/// `snap.<instance>.<app>.service` well under the 255-byte file name limit.
pub const MAX_APP_NAME_LEN: usize = 128;

/// The longest version snapd accepts.
pub const MAX_VERSION_LEN: usize = 32;

/// A name, key or revision that breaks the rules. Each message is one line that quotes the input
/// and states the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid snap name {}: names use lowercase letters, digits and single hyphens, need at least one letter, and are 2 to 40 characters long",
        quote(.0)
    )]
    SnapName(String),
    #[error(
        "invalid instance key {}: instance keys are 1 to 10 lowercase letters or digits",
        quote(.0)
    )]
    InstanceKey(String),
    #[error(
        "invalid app name {}: app names use letters, digits and single hyphens, start and end with a letter or digit, and are at most 128 characters",
        quote(.0)
    )]
    AppName(String),
    #[error(
        "invalid hook name {}: hook names use lowercase letters, digits and single hyphens, start with a letter, and are at most 128 characters",
        quote(.0)
    )]
    HookName(String),
    #[error(
        "invalid version {}: versions are 1 to 32 letters, digits and \".:+~-\", start with a letter or digit, and end with a letter, digit, \"+\" or \"~\"",
        quote(.0)
    )]
    Version(String),
    #[error(
        "invalid revision {}: revisions are a positive number without leading zeros (\"7\") or \"x\" and one for a local install (\"x7\")",
        quote(.0)
    )]
    Revision(String),
}

/// Checks a snap name against snapd's rule: 2 to 40 of `a-z`, `0-9` and `-`, at least one letter,
/// no leading, trailing or doubled hyphen.
pub fn validate_snap_name(s: &str) -> Result<(), NameError> {
    let b = s.as_bytes();
    let ok = (2..=MAX_SNAP_NAME_LEN).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && hyphens_are_single_and_inner(b);
    if ok {
        Ok(())
    } else {
        Err(NameError::SnapName(s.to_owned()))
    }
}

/// Checks an instance key (the `KEY` of `NAME_KEY`): 1 to 10 of `a-z` and `0-9`.
pub fn validate_instance_key(s: &str) -> Result<(), NameError> {
    let b = s.as_bytes();
    let ok = (1..=MAX_INSTANCE_KEY_LEN).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(NameError::InstanceKey(s.to_owned()))
    }
}

/// Checks an instance name (`NAME` or `NAME_KEY`).
pub fn validate_instance_name(s: &str) -> Result<(), NameError> {
    s.parse::<InstanceName>().map(drop)
}

/// Checks an app name: snapd's `^[A-Za-z0-9](?:-?[A-Za-z0-9])*$`, plus the project length limit.
pub fn validate_app_name(s: &str) -> Result<(), NameError> {
    let b = s.as_bytes();
    let ok = (1..=MAX_APP_NAME_LEN).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && hyphens_are_single_and_inner(b);
    if ok {
        Ok(())
    } else {
        Err(NameError::AppName(s.to_owned()))
    }
}

/// Checks a hook name: snapd's `^[a-z](?:-?[a-z0-9])*$`, plus the project length limit.
pub fn validate_hook_name(s: &str) -> Result<(), NameError> {
    let b = s.as_bytes();
    let ok = (1..=MAX_APP_NAME_LEN).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && hyphens_are_single_and_inner(b);
    if ok {
        Ok(())
    } else {
        Err(NameError::HookName(s.to_owned()))
    }
}

/// Checks a snap version against snapd's rule,
/// `^[a-zA-Z0-9](?:[a-zA-Z0-9:.+~-]{0,30}[a-zA-Z0-9+~])?$`, so a snap that works here also
/// installs with snapd.
pub fn validate_version(s: &str) -> Result<(), NameError> {
    let b = s.as_bytes();
    let middle_ok = |c: &u8| c.is_ascii_alphanumeric() || b":.+~-".contains(c);
    let ok = match b {
        [] => false,
        [only] => only.is_ascii_alphanumeric(),
        [first, middle @ .., last] => {
            b.len() <= MAX_VERSION_LEN
                && first.is_ascii_alphanumeric()
                && middle.iter().all(middle_ok)
                && (last.is_ascii_alphanumeric() || *last == b'+' || *last == b'~')
        }
    };
    if ok {
        Ok(())
    } else {
        Err(NameError::Version(s.to_owned()))
    }
}

/// The `-?[x]` part of snapd's regexes: a hyphen only between two other characters.
fn hyphens_are_single_and_inner(b: &[u8]) -> bool {
    b.first() != Some(&b'-') && b.last() != Some(&b'-') && !b.windows(2).any(|w| w == b"--")
}

/// The name a snap is installed under: the snap name, optionally with `_KEY` for a parallel
/// instance (`hello_work`). Always valid once constructed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceName {
    full: String,
    /// Byte offset of the `_`, if there is a key.
    underscore: Option<usize>,
}

impl InstanceName {
    /// Builds an instance name from its parts, checking both.
    pub fn new(snap_name: &str, instance_key: Option<&str>) -> Result<Self, NameError> {
        validate_snap_name(snap_name)?;
        match instance_key {
            None => Ok(Self {
                full: snap_name.to_owned(),
                underscore: None,
            }),
            Some(key) => {
                validate_instance_key(key)?;
                Ok(Self {
                    full: format!("{snap_name}_{key}"),
                    underscore: Some(snap_name.len()),
                })
            }
        }
    }

    /// The snap name, as in snap.yaml (`hello` for `hello_work`).
    pub fn snap_name(&self) -> &str {
        match self.underscore {
            Some(i) => &self.full[..i],
            None => &self.full,
        }
    }

    /// The instance key (`work` for `hello_work`), if any.
    pub fn instance_key(&self) -> Option<&str> {
        self.underscore.map(|i| &self.full[i + 1..])
    }

    /// The whole name, `NAME` or `NAME_KEY`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl FromStr for InstanceName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Like snapd: split at the first underscore; an underscore in the key is then a bad key.
        match s.split_once('_') {
            None => Self::new(s, None),
            Some((name, key)) => Self::new(name, Some(key)),
        }
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl AsRef<str> for InstanceName {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

impl Serialize for InstanceName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for InstanceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A snap revision: `Store(7)` is shown `7`, `Local(7)` (installed from a file) `x7`.
///
/// Ordering: every local revision sorts before every store revision; within a kind, by number.
/// The two kinds count independently, so the order across kinds means nothing beyond being total
/// and stable; callers that need "newest" should use install order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revision {
    Store(u32),
    Local(u32),
}

impl Revision {
    /// The number without its kind (`7` for both `7` and `x7`).
    pub fn number(self) -> u32 {
        match self {
            Revision::Store(n) | Revision::Local(n) => n,
        }
    }

    /// Whether this revision came from a local file rather than a store.
    pub fn is_local(self) -> bool {
        matches!(self, Revision::Local(_))
    }

    /// The local revision after the highest local one in `existing` (`x1` when there is none),
    /// so a reinstall never reuses a revision directory.
    ///
    /// Saturates at `x4294967295`; four billion local installs of one snap do not happen.
    pub fn next_local<'a>(existing: impl Iterator<Item = &'a Revision>) -> Revision {
        let max = existing
            .filter_map(|r| match r {
                Revision::Local(n) => Some(*n),
                Revision::Store(_) => None,
            })
            .max()
            .unwrap_or(0);
        Revision::Local(max.saturating_add(1).max(1))
    }
}

impl Ord for Revision {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Revision::Local(a), Revision::Local(b)) | (Revision::Store(a), Revision::Store(b)) => {
                a.cmp(b)
            }
            (Revision::Local(_), Revision::Store(_)) => Ordering::Less,
            (Revision::Store(_), Revision::Local(_)) => Ordering::Greater,
        }
    }
}

impl PartialOrd for Revision {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Revision::Store(n) => write!(f, "{n}"),
            Revision::Local(n) => write!(f, "x{n}"),
        }
    }
}

impl FromStr for Revision {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NameError::Revision(s.to_owned());
        let (local, digits) = match s.strip_prefix('x') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        // u32::from_str accepts a leading '+', so check the digits ourselves; one spelling per
        // revision keeps directory names and database keys unambiguous.
        if digits.is_empty()
            || !digits.bytes().all(|c| c.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(bad());
        }
        let n: u32 = digits.parse().map_err(|_| bad())?;
        Ok(if local {
            Revision::Local(n)
        } else {
            Revision::Store(n)
        })
    }
}

impl Serialize for Revision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Revision {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Want {
        Accept,
        Reject,
    }
    use Want::*;

    fn check(f: fn(&str) -> Result<(), NameError>, cases: &[(&str, Want)]) {
        for (input, want) in cases {
            let got = f(input);
            assert_eq!(
                got.is_ok(),
                *want == Accept,
                "input {input:?}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn snap_names() {
        let long_ok = "a".repeat(40);
        let too_long = "a".repeat(41);
        let huge = "a".repeat(5000);
        check(
            validate_snap_name,
            &[
                ("hello", Accept),
                ("hello-world", Accept),
                ("a1", Accept),
                ("1a", Accept),
                ("0ad", Accept),
                ("a-1-b", Accept),
                ("1-2-a", Accept),
                (&long_ok, Accept),
                ("", Reject),
                ("a", Reject),
                ("Foo", Reject),
                ("hellO", Reject),
                ("..", Reject),
                ("a/b", Reject),
                ("a.b", Reject),
                ("a_b", Reject),
                ("a b", Reject),
                (&too_long, Reject),
                ("-a", Reject),
                ("a-", Reject),
                ("a--b", Reject),
                ("-", Reject),
                ("123", Reject),
                ("1-2", Reject),
                ("snap.x/../../etc", Reject),
                ("../etc", Reject),
                ("hello\n", Reject),
                ("hel\0lo", Reject),
                ("he\u{1b}[31mllo", Reject),
                ("héllo", Reject),
                ("hello\u{202e}", Reject),
                (&huge, Reject),
            ],
        );
    }

    #[test]
    fn instance_keys() {
        check(
            validate_instance_key,
            &[
                ("a", Accept),
                ("1", Accept),
                ("work", Accept),
                ("abcdefghij", Accept),
                ("0123456789", Accept),
                ("", Reject),
                ("abcdefghijk", Reject),
                ("Work", Reject),
                ("a-b", Reject),
                ("a_b", Reject),
                ("a/b", Reject),
                ("..", Reject),
                ("a\n", Reject),
            ],
        );
    }

    #[test]
    fn instance_names() {
        check(
            validate_instance_name,
            &[
                ("hello", Accept),
                ("hello_work", Accept),
                ("hello_1", Accept),
                ("hello-world_abcdefghij", Accept),
                ("hello_", Reject),
                ("_work", Reject),
                ("hello_work_more", Reject),
                ("hello__work", Reject),
                ("Hello_work", Reject),
                ("hello_Work", Reject),
                ("hello_abcdefghijk", Reject),
                ("hello_../x", Reject),
                ("", Reject),
            ],
        );
    }

    #[test]
    fn instance_name_parts_and_serde() {
        let plain: InstanceName = "hello".parse().unwrap();
        assert_eq!(plain.snap_name(), "hello");
        assert_eq!(plain.instance_key(), None);
        assert_eq!(plain.to_string(), "hello");

        let keyed: InstanceName = "hello_work".parse().unwrap();
        assert_eq!(keyed.snap_name(), "hello");
        assert_eq!(keyed.instance_key(), Some("work"));
        assert_eq!(keyed.as_str(), "hello_work");
        assert_eq!(
            InstanceName::new("hello", Some("work")).unwrap(),
            keyed.clone()
        );

        let json = serde_json::to_string(&keyed).unwrap();
        assert_eq!(json, r#""hello_work""#);
        assert_eq!(serde_json::from_str::<InstanceName>(&json).unwrap(), keyed);
        let err = serde_json::from_str::<InstanceName>(r#""Hello""#).unwrap_err();
        assert!(err.to_string().contains("invalid snap name"), "{err}");

        // The key error names the key, not the whole name.
        let err = "hello_Work".parse::<InstanceName>().unwrap_err();
        assert_eq!(err, NameError::InstanceKey("Work".into()));
    }

    #[test]
    fn app_names() {
        let longest = "a".repeat(MAX_APP_NAME_LEN);
        let too_long = "a".repeat(MAX_APP_NAME_LEN + 1);
        check(
            validate_app_name,
            &[
                ("hello", Accept),
                ("Hello", Accept),
                ("h", Accept),
                ("1", Accept),
                ("hello-World-2", Accept),
                (&longest, Accept),
                ("", Reject),
                ("-hello", Reject),
                ("hello-", Reject),
                ("hel--lo", Reject),
                ("hel_lo", Reject),
                ("hel.lo", Reject),
                ("hel lo", Reject),
                ("a/b", Reject),
                ("..", Reject),
                ("héllo", Reject),
                ("hello\n", Reject),
                (&too_long, Reject),
            ],
        );
    }

    #[test]
    fn hook_names() {
        check(
            validate_hook_name,
            &[
                ("install", Accept),
                ("post-refresh", Accept),
                ("configure", Accept),
                ("a", Accept),
                ("a1-b2", Accept),
                ("", Reject),
                ("1abc", Reject),
                ("Install", Reject),
                ("-install", Reject),
                ("install-", Reject),
                ("pre--refresh", Reject),
                ("pre_refresh", Reject),
                ("../install", Reject),
            ],
        );
    }

    #[test]
    fn versions() {
        let longest = format!("1{}", "a".repeat(31));
        let too_long = format!("1{}", "a".repeat(32));
        check(
            validate_version,
            &[
                ("1", Accept),
                ("a", Accept),
                ("1.0", Accept),
                ("2.3-beta1", Accept),
                ("1:2.3+dfsg~1", Accept),
                ("1.0+", Accept),
                ("1.0~", Accept),
                ("git", Accept),
                (&longest, Accept),
                ("", Reject),
                (&too_long, Reject),
                (" 1.0", Reject),
                ("1.0 ", Reject),
                ("1.0 beta", Reject),
                (".1", Reject),
                ("-1", Reject),
                ("+", Reject),
                ("1.", Reject),
                ("1-", Reject),
                ("1:", Reject),
                ("1.0\n", Reject),
                ("1_0", Reject),
                ("v1.0‑x", Reject),
                ("аерс", Reject),
            ],
        );
    }

    #[test]
    fn messages_are_one_line_quoted_and_bounded() {
        let err = validate_snap_name("Foo").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid snap name \"Foo\": names use lowercase letters, digits and single hyphens, \
             need at least one letter, and are 2 to 40 characters long"
        );

        let huge = "A".repeat(5000);
        let err = validate_snap_name(&huge).unwrap_err().to_string();
        assert!(err.len() < 300, "message is {} bytes", err.len());
        assert!(err.contains("(5000 characters)"), "{err}");

        for nasty in [
            "evil\nname",
            "\u{1b}[2J\u{1b}[H",
            "a\0b",
            "bidi\u{202e}txt",
            "tab\there",
        ] {
            let err = validate_snap_name(nasty).unwrap_err().to_string();
            assert!(
                !err.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "unescaped character in {err:?}"
            );
        }
    }

    #[test]
    fn revisions_parse() {
        let cases: &[(&str, Option<Revision>)] = &[
            ("1", Some(Revision::Store(1))),
            ("7", Some(Revision::Store(7))),
            ("4294967295", Some(Revision::Store(u32::MAX))),
            ("x1", Some(Revision::Local(1))),
            ("x42", Some(Revision::Local(42))),
            ("0", None),
            ("x0", None),
            ("07", None),
            ("x07", None),
            ("00", None),
            ("+7", None),
            ("-7", None),
            ("x-7", None),
            ("x+7", None),
            ("4294967296", None),
            ("x", None),
            ("", None),
            ("X7", None),
            ("xx7", None),
            (" 7", None),
            ("7 ", None),
            ("7a", None),
            ("1.0", None),
            ("٣", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<Revision>();
            assert_eq!(got.as_ref().ok(), want.as_ref(), "input {input:?}: {got:?}");
            if let Some(rev) = want {
                assert_eq!(rev.to_string(), *input, "round trip of {input:?}");
            }
        }
    }

    #[test]
    fn revisions_serde_as_strings() {
        let json = serde_json::to_string(&[Revision::Store(3), Revision::Local(2)]).unwrap();
        assert_eq!(json, r#"["3","x2"]"#);
        let back: Vec<Revision> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, [Revision::Store(3), Revision::Local(2)]);
        assert!(serde_json::from_str::<Revision>(r#""x0""#).is_err());
        assert!(serde_json::from_str::<Revision>("3").is_err());
    }

    #[test]
    fn revisions_order() {
        let mut revs = vec![
            Revision::Store(10),
            Revision::Local(2),
            Revision::Store(9),
            Revision::Local(10),
            Revision::Local(1),
        ];
        revs.sort();
        assert_eq!(
            revs,
            [
                Revision::Local(1),
                Revision::Local(2),
                Revision::Local(10),
                Revision::Store(9),
                Revision::Store(10),
            ]
        );
    }

    #[test]
    fn next_local_revision() {
        assert_eq!(Revision::next_local([].iter()), Revision::Local(1));
        assert_eq!(
            Revision::next_local([Revision::Store(40)].iter()),
            Revision::Local(1)
        );
        assert_eq!(
            Revision::next_local(
                [Revision::Local(1), Revision::Store(99), Revision::Local(3)].iter()
            ),
            Revision::Local(4)
        );
        assert_eq!(
            Revision::next_local([Revision::Local(u32::MAX)].iter()),
            Revision::Local(u32::MAX)
        );
    }
}
