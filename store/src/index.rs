//! The index of one snap, `v1/snaps/NAME.json`, and the checks that make a hostile one
//! harmless.
//!
//! ```json
//! {
//!   "format": 1,
//!   "name": "hello",
//!   "revisions": {
//!     "3": {"version": "1.2", "sha3-384": "<96 hex>", "size": 4096, "path": "blobs/hello_3.snap"}
//!   },
//!   "channels": {"stable": 3}
//! }
//! ```
//!
//! The file is parsed into a JSON value first (refusing duplicate keys, so two readers cannot
//! disagree about what it says), then walked field by field: every error names the field it is
//! about (`revisions.3.path`). Unknown keys are ignored at every level, and kept by
//! [`publish`](crate::publish) when it rewrites the file.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use refreshd_snap::{validate_snap_name, validate_version};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{quote, Error, Result};

/// The index format this crate reads and writes (the top-level `"format"`).
pub const FORMAT: u64 = 1;
/// The largest index read; real ones are a few KiB.
pub const MAX_INDEX_SIZE: u64 = 16 * 1024 * 1024;
/// The most JSON values (objects, arrays, strings, numbers, ... at any depth) an index may
/// hold: about 40,000 revisions. Each parsed value costs memory many times its bytes (16 MiB
/// of `0,` would take hundreds of MiB), so this, not the size alone, bounds the memory and
/// time an index can cost.
pub const MAX_INDEX_VALUES: u64 = 250_000;
/// The largest blob an index may declare.
pub const MAX_BLOB_SIZE: u64 = 8 * 1024 * 1024 * 1024;
/// The longest blob path an index may declare.
pub const MAX_PATH_LEN: usize = 1024;
/// The longest channel name.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Hex digits of a sha3-384.
pub const SHA3_384_HEX_LEN: usize = 96;

/// One revision of a snap in a store: what to download and how to check it.
///
/// Entries come out of [`SnapIndex`] already validated; one built by hand is validated again by
/// [`Store::fetch`](crate::Store::fetch) before any request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The snap name.
    pub name: String,
    pub revision: u32,
    pub version: String,
    /// Lowercase hex, 96 digits.
    pub sha3_384: String,
    /// Bytes of the blob.
    pub size: u64,
    /// Where the blob is, relative to the store (`blobs/hello_3.snap`).
    pub path: String,
}

impl Entry {
    /// Checks every field as if it came from an index.
    pub fn validate(&self) -> Result<()> {
        let err = |field: &str, reason: String| Error::Index {
            name: self.name.clone(),
            field: format!("revisions.{}.{field}", self.revision),
            reason,
        };
        validate_snap_name(&self.name)?;
        if self.revision == 0 {
            return Err(Error::Index {
                name: self.name.clone(),
                field: "revisions".into(),
                reason: "revision 0: revisions are positive numbers".into(),
            });
        }
        validate_version(&self.version).map_err(|e| err("version", e.to_string()))?;
        check_sha3(&self.sha3_384).map_err(|r| err("sha3-384", r))?;
        check_size(self.size).map_err(|r| err("size", r))?;
        validate_blob_path(&self.path).map_err(|r| err("path", r))?;
        Ok(())
    }
}

/// The validated index of one snap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapIndex {
    name: String,
    revisions: BTreeMap<u32, Entry>,
    channels: BTreeMap<String, u32>,
}

impl SnapIndex {
    /// Parses and validates the index of `name` (the name the file was fetched as).
    pub fn parse(name: &str, bytes: &[u8]) -> Result<SnapIndex> {
        let value = parse_json(name, bytes)?;
        SnapIndex::from_value(name, &value)
    }

    /// The snap name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The revision a channel points at.
    pub fn channel(&self, channel: &str) -> Option<&Entry> {
        self.channels
            .get(channel)
            .and_then(|rev| self.revisions.get(rev))
    }

    /// One revision.
    pub fn revision(&self, revision: u32) -> Option<&Entry> {
        self.revisions.get(&revision)
    }

    /// Every revision, oldest first.
    pub fn revisions(&self) -> impl Iterator<Item = &Entry> {
        self.revisions.values()
    }

    /// Every channel and the revision it points at, by channel name.
    pub fn channels(&self) -> impl Iterator<Item = (&str, u32)> {
        self.channels.iter().map(|(c, r)| (c.as_str(), *r))
    }

    /// The highest revision.
    pub fn latest(&self) -> Option<&Entry> {
        self.revisions.values().next_back()
    }

    pub(crate) fn from_value(name: &str, value: &Value) -> Result<SnapIndex> {
        validate_snap_name(name)?;
        let err = |field: &str, reason: String| Error::Index {
            name: name.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let top = value
            .as_object()
            .ok_or_else(|| err("the file", format!("is {}, not an object", kind(value))))?;

        match top.get("format") {
            None => {
                return Err(err(
                    "field \"format\"",
                    format!("is missing (a refreshd index has \"format\": {FORMAT})"),
                ))
            }
            Some(v) => match v.as_u64() {
                Some(FORMAT) => {}
                Some(found) => {
                    return Err(Error::IndexFormat {
                        name: name.to_owned(),
                        found,
                    })
                }
                None => {
                    return Err(err(
                        "field \"format\"",
                        format!("is {}, not the number {FORMAT}", kind(v)),
                    ))
                }
            },
        }

        let file_name = string_field(top, "name").map_err(|r| err("field \"name\"", r))?;
        if file_name != name {
            return Err(err(
                "field \"name\"",
                format!(
                    "is {} but the file is the index of {}",
                    quote(file_name),
                    quote(name)
                ),
            ));
        }

        let mut revisions = BTreeMap::new();
        for (key, rev_value) in object_field(top, "revisions").map_err(|r| err("revisions", r))? {
            let field = |sub: &str| format!("revisions.{}{sub}", field_key(key));
            let revision = parse_revision(key).map_err(|r| err(&field(""), r))?;
            let obj = rev_value
                .as_object()
                .ok_or_else(|| err(&field(""), format!("is {}, not an object", kind(rev_value))))?;
            let version = string_field(obj, "version").map_err(|r| err(&field(".version"), r))?;
            validate_version(version).map_err(|e| err(&field(".version"), e.to_string()))?;
            let sha = string_field(obj, "sha3-384").map_err(|r| err(&field(".sha3-384"), r))?;
            check_sha3(sha).map_err(|r| err(&field(".sha3-384"), r))?;
            let size = u64_field(obj, "size").map_err(|r| err(&field(".size"), r))?;
            check_size(size).map_err(|r| err(&field(".size"), r))?;
            let path = string_field(obj, "path").map_err(|r| err(&field(".path"), r))?;
            validate_blob_path(path).map_err(|r| err(&field(".path"), r))?;
            revisions.insert(
                revision,
                Entry {
                    name: name.to_owned(),
                    revision,
                    version: version.to_owned(),
                    sha3_384: sha.to_ascii_lowercase(),
                    size,
                    path: path.to_owned(),
                },
            );
        }

        let mut channels = BTreeMap::new();
        for (channel, rev_value) in object_field(top, "channels").map_err(|r| err("channels", r))? {
            let field = format!("channels.{}", field_key(channel));
            validate_channel(channel).map_err(|e| err(&field, e.to_string()))?;
            let revision = rev_value
                .as_u64()
                .filter(|r| *r > 0)
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| {
                    err(
                        &field,
                        format!("is {}, not a revision number", describe(rev_value)),
                    )
                })?;
            if !revisions.contains_key(&revision) {
                return Err(err(
                    &field,
                    format!("points at revision {revision}, which is not under \"revisions\""),
                ));
            }
            channels.insert(channel.clone(), revision);
        }

        Ok(SnapIndex {
            name: name.to_owned(),
            revisions,
            channels,
        })
    }
}

/// Parses JSON, refusing duplicate keys and anything larger than [`MAX_INDEX_SIZE`].
pub(crate) fn parse_json(name: &str, bytes: &[u8]) -> Result<Value> {
    if bytes.len() as u64 > MAX_INDEX_SIZE {
        return Err(Error::IndexTooLarge {
            name: name.to_owned(),
            limit: MAX_INDEX_SIZE,
        });
    }
    let budget = Cell::new(MAX_INDEX_VALUES);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictSeed(&budget)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| Error::IndexJson {
            name: name.to_owned(),
            detail: crate::error::one_line(&e.to_string()),
        })?;
    Ok(value)
}

/// A new, empty index of `name`.
pub(crate) fn empty_index(name: &str) -> Value {
    serde_json::json!({
        "format": FORMAT,
        "name": name,
        "revisions": {},
        "channels": {},
    })
}

/// Adds `entry` to an index value and points `channel` at it, keeping unknown keys.
pub(crate) fn add_revision(index: &mut Value, entry: &Entry, channel: &str) {
    let top = index.as_object_mut().expect("validated index is an object");
    top.insert("format".into(), FORMAT.into());
    let revisions = top
        .entry("revisions")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(revisions) = revisions.as_object_mut() {
        revisions.insert(
            entry.revision.to_string(),
            serde_json::json!({
                "version": entry.version,
                "sha3-384": entry.sha3_384,
                "size": entry.size,
                "path": entry.path,
            }),
        );
    }
    let channels = top
        .entry("channels")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(channels) = channels.as_object_mut() {
        channels.insert(channel.to_owned(), entry.revision.into());
    }
}

/// Checks a blob path from an index: relative, `/`-separated, no empty, `.` or `..` components,
/// no backslash, and only letters, digits and `._-+~` — so it stays under the store as a file
/// path and needs no escaping as a URL path. The error is the reason, to be put after the
/// field's name.
pub fn validate_blob_path(path: &str) -> std::result::Result<(), String> {
    let q = || quote(path);
    if path.is_empty() {
        return Err("is empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!(
            "is {} bytes long; the limit is {MAX_PATH_LEN}",
            path.len()
        ));
    }
    if path.starts_with('/') {
        return Err(format!(
            "{} is absolute; blob paths are relative to the store",
            q()
        ));
    }
    if path.contains('\\') {
        return Err(format!(
            "{} contains a backslash; blob paths use \"/\"",
            q()
        ));
    }
    for component in path.split('/') {
        match component {
            "" => {
                return Err(format!(
                    "{} has an empty component (\"//\" or a trailing \"/\")",
                    q()
                ))
            }
            ".." => {
                return Err(format!(
                    "{} leaves the store (\"..\"); blob paths must stay under it",
                    q()
                ))
            }
            "." => return Err(format!("{} has a \".\" component", q())),
            _ => {}
        }
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-+~/".contains(c);
    if !path.chars().all(allowed) {
        return Err(format!(
            "{} has a character other than letters, digits, \"/\" and \"._-+~\"",
            q()
        ));
    }
    Ok(())
}

/// Checks a channel name: 1 to 3 `/`-separated parts (track, risk, branch) of ASCII letters,
/// digits, `.`, `_` and `-`, at most [`MAX_CHANNEL_LEN`] bytes.
pub fn validate_channel(channel: &str) -> Result<()> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    let parts = channel.split('/').count();
    if channel.len() <= MAX_CHANNEL_LEN && parts <= 3 && channel.split('/').all(part_ok) {
        Ok(())
    } else {
        Err(Error::BadChannel {
            channel: channel.to_owned(),
        })
    }
}

fn check_sha3(sha: &str) -> std::result::Result<(), String> {
    if sha.len() == SHA3_384_HEX_LEN && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "{} is not a sha3-384: it must be {SHA3_384_HEX_LEN} hex digits",
            quote(sha)
        ))
    }
}

fn check_size(size: u64) -> std::result::Result<(), String> {
    if size == 0 {
        Err("is 0; a blob cannot be empty".into())
    } else if size > MAX_BLOB_SIZE {
        Err(format!(
            "is {size} bytes, more than the limit of {MAX_BLOB_SIZE}"
        ))
    } else {
        Ok(())
    }
}

/// A revision key: a positive decimal number without leading zeros that fits in 32 bits.
fn parse_revision(key: &str) -> std::result::Result<u32, String> {
    let digits = !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit());
    match key.parse::<u32>() {
        Ok(r) if digits && r > 0 && !key.starts_with('0') => Ok(r),
        _ => Err(format!(
            "{} is not a revision: revisions are positive numbers without leading zeros",
            quote(key)
        )),
    }
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> std::result::Result<&'a str, String> {
    match obj.get(key) {
        None => Err("is missing".into()),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!("is {}, not a string", kind(v))),
    }
}

fn u64_field(obj: &Map<String, Value>, key: &str) -> std::result::Result<u64, String> {
    match obj.get(key) {
        None => Err("is missing".into()),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("is {}, not a whole number of bytes", describe(v))),
    }
}

/// An object field that may be absent (then empty).
fn object_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> std::result::Result<Box<dyn Iterator<Item = (&'a String, &'a Value)> + 'a>, String> {
    match obj.get(key) {
        None => Ok(Box::new(std::iter::empty())),
        Some(Value::Object(m)) => Ok(Box::new(m.iter())),
        Some(v) => Err(format!("is {}, not an object", kind(v))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short description of a value for messages: numbers as they are, the rest by kind.
fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        _ => kind(v).to_owned(),
    }
}

/// A key from the file as part of a field path: plain words as they are, the rest quoted.
fn field_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if plain {
        key.to_owned()
    } else {
        quote(key)
    }
}

/// A JSON value that refuses duplicate keys at any depth, and more than the values left in
/// its budget (shared by every value of one file).
struct StrictSeed<'b>(&'b Cell<u64>);

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        let left = self.0.get();
        if left == 0 {
            return Err(de::Error::custom(format_args!(
                "more than {MAX_INDEX_VALUES} values"
            )));
        }
        self.0.set(left - 1);
        d.deserialize_any(StrictVisitor(self.0))
    }
}

struct StrictVisitor<'b>(&'b Cell<u64>);

impl<'de> Visitor<'de> for StrictVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictSeed(self.0))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value_seed(StrictSeed(self.0))?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    quote(&key)
                )));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn index_with(rev: &str, path: &str) -> String {
        format!(
            r#"{{"format": 1, "name": "hello", "revisions": {{"{rev}": {{"version": "1.2", "sha3-384": "{SHA}", "size": 4096, "path": "{path}"}}}}, "channels": {{"stable": 3}}}}"#
        )
    }

    #[test]
    fn parses_a_good_index_and_ignores_unknown_keys() {
        let text = format!(
            r#"{{"format": 1, "name": "hello", "publisher": "me",
                "revisions": {{
                    "3": {{"version": "1.2", "sha3-384": "{}", "size": 4096, "path": "blobs/hello_3.snap", "notes": "x"}},
                    "4": {{"version": "1.3~rc1", "sha3-384": "{SHA}", "size": 5, "path": "b/hello_4.snap"}}
                }},
                "channels": {{"stable": 3, "latest/beta": 4}}}}"#,
            SHA.to_uppercase()
        );
        let idx = SnapIndex::parse("hello", text.as_bytes()).unwrap();
        assert_eq!(idx.name(), "hello");
        let stable = idx.channel("stable").unwrap();
        assert_eq!(stable.revision, 3);
        assert_eq!(stable.version, "1.2");
        assert_eq!(stable.sha3_384, SHA, "hex is normalized to lowercase");
        assert_eq!(stable.size, 4096);
        assert_eq!(stable.path, "blobs/hello_3.snap");
        assert_eq!(idx.channel("latest/beta").unwrap().revision, 4);
        assert!(idx.channel("edge").is_none());
        assert_eq!(idx.latest().unwrap().revision, 4);
        assert_eq!(idx.revisions().count(), 2);
        assert_eq!(
            idx.channels().collect::<Vec<_>>(),
            [("latest/beta", 4), ("stable", 3)]
        );
    }

    #[test]
    fn blob_paths() {
        let table: &[(&str, bool)] = &[
            ("blobs/hello_3.snap", true),
            ("a/b/c-1.2+x~y.snap", true),
            ("hello.snap", true),
            ("../../etc/passwd", false),
            ("blobs/../../x", false),
            ("blobs/..", false),
            ("/etc/passwd", false),
            ("blobs\\x.snap", false),
            ("blobs//x.snap", false),
            ("blobs/x.snap/", false),
            ("./x.snap", false),
            ("", false),
            ("blobs/x y.snap", false),
            ("blobs/x%2e%2e", false),
            ("blobs/x?y", false),
            ("blobs/x#y", false),
            ("blobs/\u{0}", false),
            ("blobs/é.snap", false),
        ];
        for (path, ok) in table {
            assert_eq!(validate_blob_path(path).is_ok(), *ok, "{path:?}");
        }
        assert!(validate_blob_path(&"a".repeat(MAX_PATH_LEN + 1)).is_err());
    }

    #[test]
    fn an_escaping_path_names_the_field() {
        for path in ["../../etc/passwd", "/etc/passwd"] {
            let text = index_with("3", path);
            let e = SnapIndex::parse("hello", text.as_bytes()).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("revisions.3.path"), "{msg}");
            assert!(matches!(e, Error::Index { ref field, .. } if field == "revisions.3.path"));
        }
    }

    #[test]
    fn the_number_of_values_is_bounded() {
        // Under the size limit, but each `0` would become a value of 32 bytes or more.
        let good = index_with("3", "blobs/hello_3.snap");
        let n = MAX_INDEX_VALUES as usize;
        let text = format!(
            "{},\"junk\":[0{}]}}",
            &good[..good.len() - 1],
            ",0".repeat(n)
        );
        let msg = SnapIndex::parse("hello", text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&format!("more than {n} values")), "{msg}");
        let fits = format!(
            "{},\"junk\":[0{}]}}",
            &good[..good.len() - 1],
            ",0".repeat(n / 2)
        );
        assert!(SnapIndex::parse("hello", fits.as_bytes()).is_ok());
    }

    #[test]
    fn hostile_indexes_are_refused() {
        let good = index_with("3", "blobs/hello_3.snap");
        assert!(SnapIndex::parse("hello", good.as_bytes()).is_ok());
        let table: &[(&str, String, &str)] = &[
            ("other name", good.clone(), "field \"name\""),
            ("revision 0", index_with("0", "b/x"), "revisions.0"),
            ("leading zero", index_with("03", "b/x"), "revisions.03"),
            ("negative", index_with("-3", "b/x"), "revisions.-3"),
            (
                "too big",
                index_with("4294967296", "b/x"),
                "revisions.4294967296",
            ),
            ("not a number", index_with("x", "b/x"), "revisions.x"),
            (
                "short sha",
                good.replace(SHA, "abc"),
                "revisions.3.sha3-384",
            ),
            (
                "non-hex sha",
                good.replace(SHA, &"g".repeat(96)),
                "revisions.3.sha3-384",
            ),
            (
                "huge size",
                good.replace("4096", "8589934593"),
                "revisions.3.size",
            ),
            ("zero size", good.replace("4096", "0"), "revisions.3.size"),
            (
                "negative size",
                good.replace("4096", "-1"),
                "revisions.3.size",
            ),
            (
                "string size",
                good.replace("4096", "\"4096\""),
                "revisions.3.size",
            ),
            (
                "bad version",
                good.replace("\"1.2\"", "\"-1\""),
                "revisions.3.version",
            ),
            (
                "dangling channel",
                good.replace("\"stable\": 3", "\"stable\": 4"),
                "channels.stable",
            ),
            (
                "bad channel",
                good.replace("\"stable\": 3", "\"a b\": 3"),
                "channels.\"a b\"",
            ),
            (
                "no format",
                good.replace("\"format\": 1, ", ""),
                "field \"format\"",
            ),
            (
                "string format",
                good.replace("\"format\": 1", "\"format\": \"1\""),
                "field \"format\"",
            ),
            (
                "duplicate key",
                good.replace("\"format\": 1,", "\"format\": 1, \"name\": \"other\","),
                "duplicate key",
            ),
            ("not an object", "[1]".into(), "not an object"),
            ("not JSON", "{".into(), "not valid JSON"),
        ];
        for (what, text, needle) in table {
            let name = if *what == "other name" {
                "other"
            } else {
                "hello"
            };
            let e = SnapIndex::parse(name, text.as_bytes())
                .expect_err(what)
                .to_string();
            assert!(e.contains(needle), "{what}: {e}");
            assert!(!e.contains('\n'), "{what}: {e}");
        }
    }

    #[test]
    fn a_newer_format_says_upgrade() {
        let text = index_with("3", "b/x").replace("\"format\": 1", "\"format\": 2");
        let e = SnapIndex::parse("hello", text.as_bytes()).unwrap_err();
        assert!(matches!(e, Error::IndexFormat { found: 2, .. }));
        assert!(e.to_string().contains("upgrade refreshd"));
    }

    #[test]
    fn an_invalid_requested_name_is_refused() {
        assert!(matches!(
            SnapIndex::parse("../x", b"{}"),
            Err(Error::Name(_))
        ));
    }

    #[test]
    fn channels() {
        for ok in ["stable", "latest/stable", "1.0/beta/fix-1", "Track_2"] {
            assert!(validate_channel(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "a//b",
            "a/b/c/d",
            "a b",
            "st\nable",
            "a/",
            &"x".repeat(129),
        ] {
            assert!(validate_channel(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn add_revision_keeps_unknown_keys() {
        let mut v = parse_json("hello", br#"{"format":1,"name":"hello","extra":{"k":1}}"#).unwrap();
        let entry = Entry {
            name: "hello".into(),
            revision: 1,
            version: "1.0".into(),
            sha3_384: SHA.into(),
            size: 10,
            path: "blobs/hello_1.snap".into(),
        };
        add_revision(&mut v, &entry, "stable");
        let idx = SnapIndex::from_value("hello", &v).unwrap();
        assert_eq!(idx.channel("stable"), Some(&entry));
        assert_eq!(v["extra"]["k"], 1);
    }

    #[test]
    fn entry_validate() {
        let mut e = Entry {
            name: "hello".into(),
            revision: 1,
            version: "1.0".into(),
            sha3_384: SHA.into(),
            size: 10,
            path: "blobs/hello_1.snap".into(),
        };
        assert!(e.validate().is_ok());
        e.path = "../../etc/passwd".into();
        let msg = e.validate().unwrap_err().to_string();
        assert!(msg.contains("revisions.1.path"), "{msg}");
    }
}
