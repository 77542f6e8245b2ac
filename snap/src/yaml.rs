//! `meta/snap.yaml`: the subset of snapd's format that refreshd uses.
//!
//! Unknown keys are ignored so real-world snaps (with plugs, slots, layouts, ...) still parse.
//! Every field refreshd acts on is checked here, once, so later code can put names into paths
//! and commands into unit files without re-validating them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::name::{
    validate_app_name, validate_hook_name, validate_snap_name, validate_version, NameError,
};
use crate::text::{one_line, quote};

/// The largest snap.yaml accepted. Real ones are a few KiB; the cap bounds parse time and memory
/// for a hostile upload.
pub const MAX_SNAP_YAML_SIZE: usize = 1024 * 1024;

/// snapd's limit on `description`, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4096;

/// Project limit on `summary`, in characters: it is shown on one line in listings.
pub const MAX_SUMMARY_CHARS: usize = 128;

/// The parsed, validated contents of `meta/snap.yaml`.
///
/// Build it from a snap with [`parse`]; the serde impls are for storing and reloading an
/// already-validated value and do not validate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapYaml {
    /// The snap name (not the instance name).
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub apps: BTreeMap<String, App>,
    /// Hooks by name. A hook with no settings (`install:`) is an empty [`Hook`].
    #[serde(default, deserialize_with = "hooks_allowing_empty")]
    pub hooks: BTreeMap<String, Hook>,
    /// Environment for every app and hook of the snap.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Project extension: whether a refresh waits while apps of the snap are running.
    /// Absent means [`RefreshPendingBehavior::Allow`]; see [`SnapYaml::pending_behavior`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_pending_behavior: Option<RefreshPendingBehavior>,
}

impl SnapYaml {
    /// `refresh-pending-behavior` with its default applied.
    pub fn pending_behavior(&self) -> RefreshPendingBehavior {
        self.refresh_pending_behavior.unwrap_or_default()
    }

    /// The apps that are services, by name.
    pub fn daemons(&self) -> impl Iterator<Item = (&str, &App)> {
        self.apps
            .iter()
            .filter(|(_, app)| app.daemon.is_some())
            .map(|(name, app)| (name.as_str(), app))
    }
}

/// One entry of `apps:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct App {
    /// The program, relative to the snap root, and its arguments, separated by spaces.
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonKind>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_command: Option<String>,
    /// A Go-style duration (`30s`, `1m30s`), as snapd writes it; see [`App::stop_timeout_duration`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_mode: Option<RefreshMode>,
}

impl App {
    /// The program path inside the snap (first word of `command`).
    pub fn program(&self) -> &str {
        self.command
            .split(' ')
            .find(|w| !w.is_empty())
            .unwrap_or("")
    }

    /// The arguments after the program (`command` split on spaces, as snapd's snap-exec does).
    pub fn args(&self) -> impl Iterator<Item = &str> {
        self.command.split(' ').filter(|w| !w.is_empty()).skip(1)
    }

    /// `stop-timeout` as a duration; `None` when unset. Parse already checked the syntax.
    pub fn stop_timeout_duration(&self) -> Option<Duration> {
        self.stop_timeout.as_deref().and_then(parse_go_duration)
    }
}

/// One entry of `hooks:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Hook {
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

/// Declares a string-valued enum that (de)serializes as its snap.yaml spelling and names the
/// allowed values when it meets another one (serde's default message for a bad enum value is
/// confusing in YAML: "expected a YAML tag starting with '!'").
macro_rules! yaml_word_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The spelling used in snap.yaml.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err(format!(
                        concat!("invalid ", $what, " {}: use one of {}"),
                        quote(s),
                        [$($word),+].join(", ")
                    )),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // A visitor rather than String-then-parse: an error raised inside the visitor
                // is tagged with this field's path and position, not the enclosing mapping's.
                struct Word;
                impl de::Visitor<'_> for Word {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", $what))
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$name, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Word)
            }
        }
    };
}

yaml_word_enum!(
    /// `daemon:` — how systemd runs a service (snapd's values).
    DaemonKind, "daemon type", {
        Simple => "simple",
        Forking => "forking",
        Oneshot => "oneshot",
        Notify => "notify",
        Dbus => "dbus",
    }
);

yaml_word_enum!(
    /// `refresh-mode:` — whether a refresh restarts the service (`restart`, snapd's default) or
    /// leaves the old process running (`endure`).
    RefreshMode, "refresh mode", {
        Endure => "endure",
        Restart => "restart",
    }
);

yaml_word_enum!(
    /// `refresh-pending-behavior:` (project extension) — `block` makes a refresh wait until no
    /// app of the snap is running; `allow` (the default) refreshes underneath running apps.
    #[derive(Default)]
    RefreshPendingBehavior, "refresh-pending-behavior", {
        Block => "block",
        #[default]
        Allow => "allow",
    }
);

fn hooks_allowing_empty<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Hook>, D::Error> {
    // `hooks: {install: ~}` is common in real snaps; treat null like `{}`.
    let raw = BTreeMap::<String, Option<Hook>>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// A field of snap.yaml, for messages: `field "name"` at the top level, `apps.hello.command`
/// below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    fn new(parts: &[&str]) -> Self {
        FieldPath(parts.iter().map(|s| (*s).to_owned()).collect())
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [only] = self.0.as_slice() {
            return write!(f, "field {}", quote(only));
        }
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            // Keys come from the file; quote anything that is not a plain word.
            let plain = !part.is_empty()
                && part
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
            if plain {
                f.write_str(part)?;
            } else {
                f.write_str(&quote(part))?;
            }
        }
        Ok(())
    }
}

/// Why a snap.yaml was refused. Every message is one line and starts with `snap.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    #[error("snap.yaml is too large: {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("snap.yaml is empty")]
    Empty,
    /// Not YAML at all (or YAML we refuse: several documents, duplicate keys, alias bombs).
    #[error("snap.yaml is not valid YAML: {}{message}", location_prefix(*.line, *.column))]
    Syntax {
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    #[error("snap.yaml must be a mapping of keys to values, not {found}")]
    NotAMapping { found: &'static str },
    /// Valid YAML with a missing field or a value of the wrong type; `message` starts with the
    /// field path when there is one.
    #[error("snap.yaml: {message}{}", location_suffix(*.line, *.column))]
    Schema {
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    #[error("snap.yaml: {field}: {error}")]
    InvalidName { field: FieldPath, error: NameError },
    #[error("snap.yaml: {field}: {reason}")]
    Invalid { field: FieldPath, reason: String },
}

fn location_prefix(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l} column {c}: "),
        _ => String::new(),
    }
}

fn location_suffix(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l} column {c})"),
        _ => String::new(),
    }
}

/// Parses and validates `meta/snap.yaml`.
pub fn parse(bytes: &[u8]) -> Result<SnapYaml, YamlError> {
    if bytes.len() > MAX_SNAP_YAML_SIZE {
        return Err(YamlError::TooLarge {
            size: bytes.len(),
            limit: MAX_SNAP_YAML_SIZE,
        });
    }
    // First as a generic value: that pass rejects what the typed pass would let through
    // (several documents, duplicate keys in maps, alias bombs) and tells syntax apart from
    // schema errors.
    // libyaml stops at a byte-order mark as if a second document began; Go's parser (snapd)
    // skips it, so do the same.
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let value: serde_norway::Value = serde_norway::from_slice(bytes).map_err(|e| {
        let (message, _, location) = split_location(&e);
        YamlError::Syntax {
            message,
            line: location.map(|l| l.0),
            column: location.map(|l| l.1),
        }
    })?;
    match value {
        serde_norway::Value::Mapping(_) => {}
        serde_norway::Value::Null => return Err(YamlError::Empty),
        other => {
            return Err(YamlError::NotAMapping {
                found: value_kind(&other),
            })
        }
    }
    // Parse the bytes again rather than the value: only the streaming deserializer knows the
    // field path and position of an error.
    let snap: SnapYaml = serde_norway::from_slice(bytes).map_err(|e| {
        // Only where the library itself placed the error: "missing field" at the top level
        // points at line 1 column 1, which says nothing.
        let (message, shown, _) = split_location(&e);
        YamlError::Schema {
            message,
            line: shown.map(|l| l.0),
            column: shown.map(|l| l.1),
        }
    })?;
    validate(&snap)?;
    Ok(snap)
}

fn value_kind(v: &serde_norway::Value) -> &'static str {
    match v {
        serde_norway::Value::Null => "nothing",
        serde_norway::Value::Bool(_) => "a boolean",
        serde_norway::Value::Number(_) => "a number",
        serde_norway::Value::String(_) => "a string",
        serde_norway::Value::Sequence(_) => "a list",
        serde_norway::Value::Mapping(_) => "a mapping",
        serde_norway::Value::Tagged(_) => "a tagged value",
    }
}

type LineColumn = (usize, usize);

/// Splits serde_norway's message into one line of text and its position, dropping the
/// " at line L column C" the library writes into the text so it appears once, where we put it.
/// Returns the text, the position if the text carried it, and the position in any case.
fn split_location(e: &serde_norway::Error) -> (String, Option<LineColumn>, Option<LineColumn>) {
    let mut text = e.to_string();
    let location = e.location().map(|l| (l.line(), l.column()));
    let mut shown = None;
    if let Some((line, column)) = location {
        let marker = format!(" at line {line} column {column}");
        if let Some(at) = text.find(&marker) {
            text.replace_range(at..at + marker.len(), "");
            shown = location;
        }
    }
    // serde writes field and variant names in backticks; the rest of our messages use quotes.
    (one_line(&text.replace('`', "\"")), shown, location)
}

fn validate(y: &SnapYaml) -> Result<(), YamlError> {
    let invalid = |parts: &[&str], reason: String| YamlError::Invalid {
        field: FieldPath::new(parts),
        reason,
    };
    let bad_name = |parts: &[&str], source: NameError| YamlError::InvalidName {
        field: FieldPath::new(parts),
        error: source,
    };

    validate_snap_name(&y.name).map_err(|e| bad_name(&["name"], e))?;
    validate_version(&y.version).map_err(|e| bad_name(&["version"], e))?;
    if let Some(summary) = &y.summary {
        if summary.chars().any(char::is_control) {
            return Err(invalid(
                &["summary"],
                "must be one line without control characters".into(),
            ));
        }
        let n = summary.chars().count();
        if n > MAX_SUMMARY_CHARS {
            return Err(invalid(
                &["summary"],
                format!("must be at most {MAX_SUMMARY_CHARS} characters (got {n})"),
            ));
        }
    }
    if let Some(description) = &y.description {
        let n = description.chars().count();
        if n > MAX_DESCRIPTION_CHARS {
            return Err(invalid(
                &["description"],
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters (got {n})"),
            ));
        }
    }
    validate_environment(&y.environment, &["environment"])?;

    for (name, app) in &y.apps {
        validate_app_name(name).map_err(|e| bad_name(&["apps"], e))?;
        validate_command(&app.command).map_err(|r| invalid(&["apps", name, "command"], r))?;
        if let Some(stop) = &app.stop_command {
            validate_command(stop).map_err(|r| invalid(&["apps", name, "stop-command"], r))?;
        }
        if let Some(timeout) = &app.stop_timeout {
            if parse_go_duration(timeout).is_none() {
                return Err(invalid(
                    &["apps", name, "stop-timeout"],
                    format!(
                        "invalid duration {}: use a number and a unit, such as \"30s\" or \"1m30s\"",
                        quote(timeout)
                    ),
                ));
            }
        }
        // snapd refuses these on non-services; a refresh-mode there would be silently ignored.
        if app.daemon.is_none() {
            for (set, key) in [
                (app.stop_command.is_some(), "stop-command"),
                (app.stop_timeout.is_some(), "stop-timeout"),
                (app.refresh_mode.is_some(), "refresh-mode"),
            ] {
                if set {
                    return Err(invalid(
                        &["apps", name, key],
                        "only applies to services (apps with \"daemon\")".into(),
                    ));
                }
            }
        }
        validate_environment(&app.environment, &["apps", name, "environment"])?;
    }

    for (name, hook) in &y.hooks {
        validate_hook_name(name).map_err(|e| bad_name(&["hooks"], e))?;
        validate_environment(&hook.environment, &["hooks", name, "environment"])?;
    }
    Ok(())
}

/// Characters snapd allows in app commands (`appContentWhitelist`); quotes and shell
/// metacharacters would confuse the word splitting that turns a command into argv.
fn command_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/. _#:$-".contains(c)
}

fn validate_command(cmd: &str) -> Result<(), String> {
    if cmd.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if cmd.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if let Some(bad) = cmd.chars().find(|c| !command_char_ok(*c)) {
        return Err(format!(
            "contains {}, but commands may only use letters, digits, spaces and \"/._#:$-\"",
            quote(&bad.to_string())
        ));
    }
    let program = cmd.split(' ').find(|w| !w.is_empty()).unwrap_or("");
    // The program is resolved against the snap's mount point; an absolute path or ".." would run
    // something from outside the snap.
    if program.starts_with('/') || program.split('/').any(|part| part == "..") {
        return Err("must be a relative path inside the snap without \"..\"".into());
    }
    Ok(())
}

fn validate_environment(env: &BTreeMap<String, String>, at: &[&str]) -> Result<(), YamlError> {
    for (key, value) in env {
        let b = key.as_bytes();
        let key_ok = !b.is_empty()
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let mut field: Vec<&str> = at.to_vec();
        if !key_ok {
            return Err(YamlError::Invalid {
                field: FieldPath::new(&field),
                reason: format!(
                    "invalid variable name {}: use letters, digits and \"_\", not starting with a digit",
                    quote(key)
                ),
            });
        }
        // Values end up in unit files and execve's environment: no NUL, no line breaks.
        if value.chars().any(|c| c.is_control() && c != '\t') {
            field.push(key);
            return Err(YamlError::Invalid {
                field: FieldPath::new(&field),
                reason: "value must not contain control characters".into(),
            });
        }
    }
    Ok(())
}

/// Parses a Go `time.ParseDuration` string without a sign (`300ms`, `1.5s`, `1h2m3s`, `0`),
/// which is what snapd accepts for timeouts.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = after;
    }
    // Go's limit is about 292 years; anything near it is a mistake anyway.
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "name: hello\nversion: \"1.0\"\n";

    fn with_apps(apps: &str) -> String {
        format!("{HELLO}apps:\n{apps}")
    }

    #[test]
    fn realistic_snap_yaml() {
        let text = r#"
name: hello-world
version: 6.4
summary: The 'hello-world' of snaps
description: |
  This is a simple hello world example.
  It has two lines.
type: app
base: core22
confinement: strict
grade: stable
architectures: [amd64]
license: MIT
environment:
  LANG: C.UTF-8
  ANSWER: 42
refresh-pending-behavior: block
apps:
  hello-world:
    command: bin/echo
  sh:
    command: bin/sh -c "exit"
  evil:
    command: bin/evil
    plugs: [home, network]
  env:
    command: bin/env
    environment:
      FOO: bar
  svc:
    command: bin/svc --port 8080
    daemon: simple
    stop-command: bin/svc-stop
    stop-timeout: 1m30s
    refresh-mode: endure
    restart-condition: always
    plugs: [network-bind]
hooks:
  install:
  configure:
    plugs: [network]
  post-refresh:
    environment:
      HOOKY: "yes"
plugs:
  home:
slots:
  dbus-svc:
    interface: dbus
layout:
  /etc/foo:
    bind: $SNAP_DATA/etc/foo
"#;
        // `sh` quotes its argument, which snapd refuses; drop it to get a snap snapd accepts.
        let err = parse(text.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "snap.yaml: apps.sh.command: contains \"\\\"\", but commands may only use letters, \
             digits, spaces and \"/._#:$-\""
        );
        let text = text.replace("  sh:\n    command: bin/sh -c \"exit\"\n", "");
        let y = parse(text.as_bytes()).unwrap();
        assert_eq!(y.name, "hello-world");
        assert_eq!(y.version, "6.4");
        assert_eq!(y.summary.as_deref(), Some("The 'hello-world' of snaps"));
        assert!(y.description.as_deref().unwrap().contains("two lines"));
        assert_eq!(y.environment["ANSWER"], "42");
        assert_eq!(y.pending_behavior(), RefreshPendingBehavior::Block);
        assert_eq!(
            y.apps.keys().collect::<Vec<_>>(),
            ["env", "evil", "hello-world", "svc"]
        );
        let svc = &y.apps["svc"];
        assert_eq!(svc.daemon, Some(DaemonKind::Simple));
        assert_eq!(svc.program(), "bin/svc");
        assert_eq!(svc.args().collect::<Vec<_>>(), ["--port", "8080"]);
        assert_eq!(svc.stop_command.as_deref(), Some("bin/svc-stop"));
        assert_eq!(svc.stop_timeout_duration(), Some(Duration::from_secs(90)));
        assert_eq!(svc.refresh_mode, Some(RefreshMode::Endure));
        assert_eq!(y.apps["env"].environment["FOO"], "bar");
        assert_eq!(y.daemons().map(|(n, _)| n).collect::<Vec<_>>(), ["svc"]);
        assert_eq!(y.hooks.len(), 3);
        assert!(y.hooks["install"].environment.is_empty());
        assert_eq!(y.hooks["post-refresh"].environment["HOOKY"], "yes");

        // The parsed form survives a JSON round trip (the daemon stores it).
        let json = serde_json::to_string(&y).unwrap();
        assert_eq!(serde_json::from_str::<SnapYaml>(&json).unwrap(), y);
    }

    #[test]
    fn minimal_snap_yaml_defaults() {
        let y = parse(b"name: hi\nversion: 1\n").unwrap();
        assert_eq!(y.version, "1");
        assert!(y.apps.is_empty() && y.hooks.is_empty() && y.environment.is_empty());
        assert_eq!(y.refresh_pending_behavior, None);
        assert_eq!(y.pending_behavior(), RefreshPendingBehavior::Allow);
        // An empty `apps:` is an empty map, as in snapd.
        assert!(parse(b"name: hi\nversion: 1\napps:\n")
            .unwrap()
            .apps
            .is_empty());
    }

    /// Each case: the document and the exact message (or, with a leading `~`, a substring).
    #[test]
    fn rejections() {
        let huge = vec![b' '; MAX_SNAP_YAML_SIZE + 1];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (huge, "snap.yaml is too large: 1048577 bytes, the limit is 1048576"),
            (b"".to_vec(), "snap.yaml is empty"),
            (b"# only a comment\n".to_vec(), "snap.yaml is empty"),
            (b"~\n".to_vec(), "snap.yaml is empty"),
            (b"- a\n- b\n".to_vec(), "snap.yaml must be a mapping of keys to values, not a list"),
            (b"hello\n".to_vec(), "snap.yaml must be a mapping of keys to values, not a string"),
            // Malformed YAML.
            (
                b"name: a\n  version: 1\n".to_vec(),
                "snap.yaml is not valid YAML: line 2 column 10: mapping values are not allowed in this context",
            ),
            (
                b"name: \"unterminated\nversion: 1\n".to_vec(),
                "snap.yaml is not valid YAML: line 3 column 1: found unexpected end of stream, \
                 while scanning a quoted scalar at line 1 column 7",
            ),
            (
                b"\tname: a\n".to_vec(),
                "~snap.yaml is not valid YAML: line 1 column 1: found character that cannot start any token",
            ),
            (b"name: *nope\n".to_vec(), "snap.yaml is not valid YAML: line 1 column 7: unknown anchor"),
            (
                b"name: a\nversion: 1\n---\nname: b\n".to_vec(),
                "~snap.yaml is not valid YAML: deserializing from YAML containing more than one document",
            ),
            (b"name: a\nname: b\nversion: 1\n".to_vec(), "~is not valid YAML: line 1 column 1: duplicate entry with key \"name\""),
            (
                with_apps("  x: {command: a}\n  x: {command: b}\n").into_bytes(),
                "~snap.yaml is not valid YAML: line 4 column 3: apps: duplicate entry with key \"x\"",
            ),
            (b"name: \xff\xfe\nversion: 1\n".to_vec(), "~snap.yaml is not valid YAML: line 1 column 1: invalid leading UTF-8 octet at position 6"),
            (
                b"a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
                  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\nname: a\nversion: 1\n"
                    .to_vec(),
                "snap.yaml is not valid YAML: repetition limit exceeded",
            ),
            (
                format!("name: a\nversion: 1\nx: {}1{}\n", "[".repeat(200), "]".repeat(200)).into_bytes(),
                "~snap.yaml is not valid YAML: line 3 column 131: recursion limit exceeded",
            ),
            // Missing fields and wrong types.
            (b"version: 1\n".to_vec(), "snap.yaml: missing field \"name\""),
            (b"name: hello\n".to_vec(), "snap.yaml: missing field \"version\""),
            (b"name: [hello]\nversion: 1\n".to_vec(), "snap.yaml: name: invalid type: sequence, expected a string (line 1 column 7)"),
            (format!("{HELLO}summary: {{a: 1}}\n").into_bytes(), "snap.yaml: summary: invalid type: map, expected a string (line 3 column 10)"),
            (format!("{HELLO}apps: 5\n").into_bytes(), "snap.yaml: apps: invalid type: integer \"5\", expected a map (line 3 column 7)"),
            (format!("{HELLO}apps: [a, b]\n").into_bytes(), "snap.yaml: apps: invalid type: sequence, expected a map (line 3 column 7)"),
            (
                with_apps("  hello:\n    daemon: simple\n").into_bytes(),
                "snap.yaml: apps.hello: missing field \"command\" (line 5 column 5)",
            ),
            (
                with_apps("  hello:\n    command: [bin/hello]\n").into_bytes(),
                "snap.yaml: apps.hello.command: invalid type: sequence, expected a string (line 5 column 14)",
            ),
            (
                with_apps("  hello:\n    command: bin/hello\n    daemon: sleepy\n").into_bytes(),
                "snap.yaml: apps.hello.daemon: invalid daemon type \"sleepy\": use one of simple, forking, oneshot, notify, dbus (line 6 column 13)",
            ),
            (
                with_apps("  hello:\n    command: bin/hello\n    daemon: [simple]\n").into_bytes(),
                "snap.yaml: apps.hello.daemon: invalid type: sequence, expected a daemon type (line 6 column 13)",
            ),
            (
                with_apps("  hello:\n    command: bin/hello\n    daemon: simple\n    refresh-mode: sometimes\n").into_bytes(),
                "~snap.yaml: apps.hello.refresh-mode: invalid refresh mode \"sometimes\": use one of endure, restart",
            ),
            (
                format!("{HELLO}refresh-pending-behavior: later\n").into_bytes(),
                "~snap.yaml: refresh-pending-behavior: invalid refresh-pending-behavior \"later\": use one of block, allow",
            ),
            (format!("{HELLO}environment:\n  FOO: {{a: 1}}\n").into_bytes(), "~snap.yaml: environment.FOO: invalid type: map"),
            (format!("{HELLO}hooks:\n  install: 3\n").into_bytes(), "~snap.yaml: hooks.install: invalid type: integer"),
            (
                with_apps("  \"x\\e[31m\":\n    command: [1]\n").into_bytes(),
                "snap.yaml: apps.x\\u{1b}[31m.command: invalid type: sequence, expected a string (line 5 column 14)",
            ),
            // Bad names and versions.
            (
                b"name: Foo\nversion: 1\n".to_vec(),
                "snap.yaml: field \"name\": invalid snap name \"Foo\": names use lowercase letters, digits \
                 and single hyphens, need at least one letter, and are 2 to 40 characters long",
            ),
            (b"name: snap.x/../../etc\nversion: 1\n".to_vec(), "~snap.yaml: field \"name\": invalid snap name \"snap.x/../../etc\""),
            (b"name: \"\"\nversion: 1\n".to_vec(), "~snap.yaml: field \"name\": invalid snap name \"\""),
            (b"name: hello\nversion: 1.0 beta\n".to_vec(), "~snap.yaml: field \"version\": invalid version \"1.0 beta\""),
            (b"name: hello\nversion:\n".to_vec(), "~snap.yaml: field \"version\": invalid version \"\""),
            (b"name: hello\nversion: \"\\e[2J\"\n".to_vec(), "~snap.yaml: field \"version\": invalid version \"\\u{1b}[2J\""),
            (format!("{HELLO}summary: \"two\\nlines\"\n").into_bytes(), "snap.yaml: field \"summary\": must be one line without control characters"),
            (format!("{HELLO}summary: {}\n", "s".repeat(129)).into_bytes(), "snap.yaml: field \"summary\": must be at most 128 characters (got 129)"),
            (format!("{HELLO}description: {}\n", "d".repeat(4097)).into_bytes(), "snap.yaml: field \"description\": must be at most 4096 characters (got 4097)"),
            (
                with_apps("  Bad_Name:\n    command: bin/x\n").into_bytes(),
                "~snap.yaml: field \"apps\": invalid app name \"Bad_Name\"",
            ),
            (with_apps("  -x:\n    command: bin/x\n").into_bytes(), "~snap.yaml: field \"apps\": invalid app name \"-x\""),
            (format!("{HELLO}hooks:\n  Install:\n").into_bytes(), "~snap.yaml: field \"hooks\": invalid hook name \"Install\""),
            (format!("{HELLO}hooks:\n  ../x:\n").into_bytes(), "~snap.yaml: field \"hooks\": invalid hook name \"../x\""),
            // Bad commands.
            (with_apps("  hello:\n    command: \"\"\n").into_bytes(), "snap.yaml: apps.hello.command: must not be empty"),
            (with_apps("  hello:\n    command: \"  \"\n").into_bytes(), "snap.yaml: apps.hello.command: must not be empty"),
            (
                with_apps("  hello:\n    command: /bin/sh\n").into_bytes(),
                "snap.yaml: apps.hello.command: must be a relative path inside the snap without \"..\"",
            ),
            (
                with_apps("  hello:\n    command: ../../bin/sh\n").into_bytes(),
                "snap.yaml: apps.hello.command: must be a relative path inside the snap without \"..\"",
            ),
            (
                with_apps("  hello:\n    command: bin/../../../bin/sh -c x\n").into_bytes(),
                "snap.yaml: apps.hello.command: must be a relative path inside the snap without \"..\"",
            ),
            (
                with_apps("  hello:\n    command: \" /bin/sh\"\n").into_bytes(),
                "snap.yaml: apps.hello.command: must be a relative path inside the snap without \"..\"",
            ),
            (
                with_apps("  hello:\n    command: \"bin/x\\nrm -rf /\"\n").into_bytes(),
                "snap.yaml: apps.hello.command: must not contain control characters",
            ),
            (
                with_apps("  hello:\n    command: \"bin/x\\0\"\n").into_bytes(),
                "snap.yaml: apps.hello.command: must not contain control characters",
            ),
            (
                with_apps("  hello:\n    command: bin/x; reboot\n").into_bytes(),
                "~snap.yaml: apps.hello.command: contains \";\", but commands may only use",
            ),
            (
                with_apps("  hello:\n    command: bin/x `id`\n").into_bytes(),
                "~snap.yaml: apps.hello.command: contains \"`\"",
            ),
            (
                with_apps("  hello:\n    command: bin/x\n    daemon: simple\n    stop-command: /bin/kill\n").into_bytes(),
                "snap.yaml: apps.hello.stop-command: must be a relative path inside the snap without \"..\"",
            ),
            (
                with_apps("  hello:\n    command: bin/x\n    daemon: simple\n    stop-timeout: soon\n").into_bytes(),
                "snap.yaml: apps.hello.stop-timeout: invalid duration \"soon\": use a number and a unit, such as \"30s\" or \"1m30s\"",
            ),
            (
                with_apps("  hello:\n    command: bin/x\n    stop-timeout: 10s\n").into_bytes(),
                "snap.yaml: apps.hello.stop-timeout: only applies to services (apps with \"daemon\")",
            ),
            (
                with_apps("  hello:\n    command: bin/x\n    refresh-mode: endure\n").into_bytes(),
                "snap.yaml: apps.hello.refresh-mode: only applies to services (apps with \"daemon\")",
            ),
            // Bad environments.
            (
                format!("{HELLO}environment:\n  1FOO: x\n").into_bytes(),
                "snap.yaml: field \"environment\": invalid variable name \"1FOO\": use letters, digits and \"_\", not starting with a digit",
            ),
            (format!("{HELLO}environment:\n  FOO-BAR: x\n").into_bytes(), "~snap.yaml: field \"environment\": invalid variable name \"FOO-BAR\""),
            (format!("{HELLO}environment:\n  \"FOO=BAR\": x\n").into_bytes(), "~invalid variable name \"FOO=BAR\""),
            (format!("{HELLO}environment:\n  \"\": x\n").into_bytes(), "~invalid variable name \"\""),
            (
                format!("{HELLO}environment:\n  FOO: \"a\\nb\"\n").into_bytes(),
                "snap.yaml: environment.FOO: value must not contain control characters",
            ),
            (
                with_apps("  hello:\n    command: bin/x\n    environment:\n      \"A B\": x\n").into_bytes(),
                "~snap.yaml: apps.hello.environment: invalid variable name \"A B\"",
            ),
            (
                format!("{HELLO}hooks:\n  install:\n    environment:\n      X: \"\\0\"\n").into_bytes(),
                "snap.yaml: hooks.install.environment.X: value must not contain control characters",
            ),
        ];
        // Report every mismatch at once: these messages are read by people, and a table of
        // them is easier to review than one failure at a time.
        let mut failures = Vec::new();
        for (doc, want) in &cases {
            let shown = String::from_utf8_lossy(doc);
            let shown: String = shown.chars().take(120).collect();
            let err = match parse(doc) {
                Ok(y) => {
                    failures.push(format!("accepted {shown:?} as {y:?}"));
                    continue;
                }
                Err(e) => e.to_string(),
            };
            let ok = match want.strip_prefix('~') {
                Some(part) => err.contains(part),
                None => err == *want,
            };
            if !ok || err.contains('\n') || err.len() > 500 {
                failures.push(format!("for {shown:?}\n  got: {err}\n want: {want}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn unknown_keys_and_benign_shapes_are_accepted() {
        let cases: &[&str] = &[
            "name: hi\nversion: 1\nconfinement: strict\nplugs: {home: }\n",
            "name: hi\nversion: 1\napps:\n  a:\n    command: bin/a\n    plugs: [x]\n    completer: c.sh\n",
            "name: hi\nversion: 1\nhooks:\n  install: ~\n  configure: {}\n",
            "name: hi\nversion: 1\nenvironment:\n  _X1: \"\"\n  TAB: \"a\\tb\"\n",
            "name: hi\nversion: 1\napps:\n  a:\n    command: bin/a $SNAP_DATA/x --opt:1 #c\n",
            "name: hi\nversion: 1\napps:\n  a:\n    command: ./bin/a\n",
            "name: hi\nversion: 1\napps:\n  a:\n    command: bin/a ../relative-arg\n",
            "name: hi\nversion: 1\napps:\n  a:\n    command: bin/a\n    daemon: notify\n    stop-timeout: 0\n",
            "\u{feff}name: hi\nversion: 1\n",
        ];
        for doc in cases {
            if let Err(e) = parse(doc.as_bytes()) {
                panic!("refused {doc:?}: {e}");
            }
        }
    }

    #[test]
    fn go_durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("0", Some(Duration::ZERO)),
            ("30s", Some(Duration::from_secs(30))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("500ms", Some(Duration::from_millis(500))),
            ("10us", Some(Duration::from_micros(10))),
            ("10µs", Some(Duration::from_micros(10))),
            ("7ns", Some(Duration::from_nanos(7))),
            ("", None),
            ("10", None),
            ("s", None),
            ("-1s", None),
            ("+1s", None),
            ("1.2.3s", None),
            (".s", None),
            ("1d", None),
            ("1 s", None),
            ("1s ", None),
            ("99999999999999999999h", None),
        ];
        for (input, want) in cases {
            let got = parse_go_duration(input);
            match (got, want) {
                (Some(g), Some(w)) => assert!(
                    g.abs_diff(*w) < Duration::from_nanos(2),
                    "{input:?}: {g:?} != {w:?}"
                ),
                (g, w) => assert_eq!(g, *w, "{input:?}"),
            }
        }
    }
}
