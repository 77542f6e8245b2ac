//! The JSON shapes of refreshd's API (docs/api.md), shared by the daemon, which serializes
//! them, and the client, which deserializes them.
//!
//! Field names are kebab-case exactly as documented. Times are [`jiff::Timestamp`]s, which
//! serialize as RFC 3339 strings in UTC with milliseconds, always three digits ([`rfc3339`]). Optional values serialize as `null` (as the examples in
//! the doc show) and parse from either `null` or absence.

use std::fmt;
use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Times in the API: RFC 3339 in UTC with a fixed precision, milliseconds
/// (`2026-11-21T20:15:03.120Z`), so that every time has one shape. Any RFC 3339 time parses.
pub mod rfc3339 {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{t:.3}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        Timestamp::deserialize(d)
    }

    /// The same for an optional time (`null` when absent).
    pub mod option {
        use jiff::Timestamp;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            Option::<Timestamp>::deserialize(d)
        }
    }
}

mod refresh;
mod status;
pub use refresh::*;
pub use status::*;

/// `GET /v1/system-info`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct SystemInfo {
    pub version: String,
    /// The API version, `"v1"`.
    pub api: String,
    pub root: PathBuf,
    pub pid: u32,
    #[serde(with = "crate::types::rfc3339")]
    pub started: Timestamp,
    /// How many snaps are installed.
    pub snaps: u64,
    pub changes_in_progress: u64,
    pub mount_mode: MountMode,
    /// How app processes are tracked: `v1`, `v1-poll`, `v2` or `none`.
    #[serde(default)]
    pub tracking: String,
    /// Why that backend (or why none is usable).
    #[serde(default)]
    pub tracking_reason: String,
    /// How snaps' services are run: `systemd` or `none` (left alone).
    #[serde(default)]
    pub services: String,
    /// Why (for `none`: why systemd is not used).
    #[serde(default)]
    pub services_reason: String,
    /// How often snaps are refreshed by themselves (`6h`); absent when auto-refresh is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_refresh: Option<String>,
    /// When the next auto-refresh is due; absent when auto-refresh is off.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::types::rfc3339::option"
    )]
    pub next_auto_refresh: Option<Timestamp>,
    /// When auto-refresh last ran (kept across restarts); absent if it never did.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::types::rfc3339::option"
    )]
    pub last_auto_refresh: Option<Timestamp>,
    /// What the kernel runs, as root, when a group of the cgroup v1 freezer empties: the
    /// hierarchy's `release_agent`, one value for the whole machine. Absent without a freezer
    /// hierarchy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_agent: Option<ReleaseAgent>,
    /// The store snaps are installed and refreshed from (`refreshd --store`), and how it is
    /// trusted; absent without a store (and from daemons older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreInfo>,
}

/// `GET /v1/system-info`'s `store`: where new revisions come from, and whether what it serves
/// is verified.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct StoreInfo {
    /// The store's address as refreshd uses it (a directory, or a base URL).
    pub url: String,
    /// Everything read from it is verified through its signed metadata, from a pinned root.
    /// False only with `refreshd --insecure-unsigned-store`: whoever serves the store chooses
    /// what is installed.
    pub signed: bool,
    /// The pinned root metadata the store is verified from; absent when it is not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
}

impl StoreInfo {
    /// What refreshctl says on stderr whenever it shows this store, when it is not signed.
    pub fn warning(&self) -> Option<String> {
        (!self.signed).then(|| unsigned_store_warning(&self.url))
    }
}

/// The warning about a store refreshd does not verify, the same wherever it is said (`status`,
/// `status NAME`).
pub fn unsigned_store_warning(url: &str) -> String {
    format!(
        "the store {url} is not verified (refreshd --insecure-unsigned-store): whoever serves it chooses what is installed; pin its root instead (docs/store.md)"
    )
}

/// The freezer hierarchy's `release_agent` (docs/runctl-protocol.md).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ReleaseAgent {
    /// The path the kernel runs; empty when none is registered.
    pub path: String,
    /// A build of refreshd's agent: named `refresh-release-agent` and carrying the agent
    /// protocol's marker.
    pub ours: bool,
    /// A regular file only root can change, on a path only root can write, every directory up
    /// to `/` included.
    pub safe: bool,
    /// Why it is not safe (it names nothing, a directory on the way is writable by others, ...),
    /// or why it could not be read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
}

/// How snap payloads are made available.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MountMode {
    /// Read-only loop mounts of the squashfs images.
    Loop,
    /// Unpacked copies, where loop devices are unavailable.
    Extract,
    /// A mode this client does not know (a newer daemon).
    #[serde(other)]
    Unknown,
}

impl fmt::Display for MountMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            MountMode::Loop => "loop",
            MountMode::Extract => "extract",
            MountMode::Unknown => "unknown",
        })
    }
}

/// An installed snap: an element of `GET /v1/snaps`, or `GET /v1/snaps/NAME`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Snap {
    /// The instance name (`hello_work` for a parallel instance).
    pub name: String,
    /// The name from snap.yaml.
    pub snap_name: String,
    pub instance_key: Option<String>,
    /// The current revision (`"x1"` for a local install).
    pub revision: String,
    pub version: String,
    pub summary: String,
    pub channel: Option<String>,
    /// `"forever"` or an RFC 3339 time; `None` when not held.
    pub hold: Option<String>,
    /// Every revision kept on disk, oldest first.
    #[serde(default)]
    pub revisions: Vec<String>,
    #[serde(default)]
    pub apps: Vec<AppInfo>,
    #[serde(with = "crate::types::rfc3339")]
    pub installed: Timestamp,
}

/// An app of a snap.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct AppInfo {
    pub name: String,
    pub command: String,
    /// The daemon type (`simple`, `forking`, …) when the app is a service.
    pub daemon: Option<String>,
}

/// A change: a user-visible operation made of tasks.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Change {
    pub id: u64,
    /// `install`, `remove`, …
    pub kind: String,
    pub summary: String,
    /// The snap this change touches, if any.
    pub snap: Option<String>,
    pub status: Status,
    /// True once no task can make progress any more.
    pub ready: bool,
    #[serde(with = "crate::types::rfc3339")]
    pub spawn_time: Timestamp,
    #[serde(default, with = "crate::types::rfc3339::option")]
    pub ready_time: Option<Timestamp>,
    /// Every task error, one per line.
    pub error: Option<String>,
    /// Empty (and left out of the JSON) in `GET /v1/changes`, which lists changes without
    /// their tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<Task>,
}

/// One step of a change.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Task {
    pub id: u64,
    pub kind: String,
    pub summary: String,
    pub status: Status,
    #[serde(default)]
    pub progress: Progress,
    #[serde(default)]
    pub log: Vec<String>,
    /// Set while the task waits to retry a transient failure.
    pub retry: Option<RetryInfo>,
    /// Set while the task is parked in [`Status::Wait`].
    pub wait: Option<WaitInfo>,
    #[serde(with = "crate::types::rfc3339")]
    pub spawn_time: Timestamp,
    #[serde(default, with = "crate::types::rfc3339::option")]
    pub ready_time: Option<Timestamp>,
}

/// How far a task has got; `total` 0 means unknown.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub struct Progress {
    pub label: String,
    pub done: u64,
    pub total: u64,
}

/// Why and when a task will be retried.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct RetryInfo {
    pub count: u32,
    pub reason: String,
    #[serde(with = "crate::types::rfc3339")]
    pub next_attempt: Timestamp,
}

/// What a task parked in `Wait` waits for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct WaitInfo {
    /// The event that wakes the task, e.g. `snap-idle:hello`.
    pub event: String,
    /// A time after which the task stops waiting, if any.
    #[serde(default, with = "crate::types::rfc3339::option")]
    pub until: Option<Timestamp>,
    pub reason: String,
}

/// The status of a task, or of a change (derived from its tasks).
///
/// Serialized as the bare variant name (`"Doing"`), as the doc spells them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Do,
    Doing,
    Done,
    Undo,
    Undoing,
    Undone,
    Error,
    Hold,
    Wait,
}

impl Status {
    /// True when nothing more will happen: `Done`, `Undone`, `Error` or `Hold`.
    pub fn is_ready(self) -> bool {
        matches!(
            self,
            Status::Done | Status::Undone | Status::Error | Status::Hold
        )
    }

    /// True when this is a ready status that did not achieve what was asked: `Undone` (rolled
    /// back or aborted), `Error`, or `Hold` (aborted before it started).
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Undone | Status::Error | Status::Hold)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Do => "Do",
            Status::Doing => "Doing",
            Status::Done => "Done",
            Status::Undo => "Undo",
            Status::Undoing => "Undoing",
            Status::Undone => "Undone",
            Status::Error => "Error",
            Status::Hold => "Hold",
            Status::Wait => "Wait",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str, so that `{:<8}` lines statuses up.
        f.pad(self.as_str())
    }
}

/// The body of every non-2xx answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    pub kind: ErrorKind,
    /// One line for a person: what is wrong and what to do.
    pub message: String,
    /// The change the error is about, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<u64>,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                kind,
                message: message.into(),
                change: None,
            },
        }
    }

    /// The same error, naming `change`.
    pub fn with_change(mut self, change: u64) -> Self {
        self.error.change = Some(change);
        self
    }
}

/// The machine-readable class of an error.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    BadRequest,
    InvalidSnap,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    Internal,
    Unavailable,
    /// A kind this client does not know, so a newer daemon's errors still parse.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The HTTP status the doc pairs with this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest | ErrorKind::InvalidSnap => 400,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Internal | ErrorKind::Unknown => 500,
            ErrorKind::Unavailable => 503,
        }
    }

    /// The kind the doc pairs with an HTTP status, for error bodies that are not ours (a
    /// proxy, a crashing daemon).
    pub fn from_http_status(status: u16) -> Self {
        match status {
            400 => ErrorKind::BadRequest,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            413 => ErrorKind::TooLarge,
            500 => ErrorKind::Internal,
            503 => ErrorKind::Unavailable,
            _ => ErrorKind::Unknown,
        }
    }
}

/// `202 {"change": ID}`: the answer to an asynchronous operation.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRef {
    pub change: u64,
}

/// Body of `POST /v1/snaps/NAME`.
/// `POST /v1/snaps/NAME`: `{"action": "remove"}` or `{"action": "refresh", "channel": "beta"}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapAction {
    pub action: SnapActionKind,
    /// For refresh: the channel to follow (default: the snap's, else `stable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// For revert: the kept revision to go to (default: the one before the current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// For remove: keep no snapshot of the snap's data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub purge: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SnapActionKind {
    Remove,
    Refresh,
    Revert,
}

impl SnapAction {
    pub fn remove(purge: bool) -> Self {
        SnapAction {
            action: SnapActionKind::Remove,
            channel: None,
            revision: None,
            purge,
        }
    }

    pub fn revert(revision: Option<&str>) -> Self {
        SnapAction {
            action: SnapActionKind::Revert,
            channel: None,
            revision: revision.map(str::to_owned),
            purge: false,
        }
    }
}

/// A snapshot of a removed snap's data: an element of `GET /v1/snapshots`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    /// Its number: the id of the change that saved it.
    pub set: u64,
    pub snap: String,
    /// The revision whose data it holds.
    pub revision: String,
    pub version: String,
    /// The users whose data it holds (names; a uid without a name as its number).
    pub users: Vec<String>,
    #[serde(with = "crate::types::rfc3339")]
    pub time: Timestamp,
    /// When it is deleted, unless restored or forgotten first.
    #[serde(with = "crate::types::rfc3339::option")]
    pub expires: Option<Timestamp>,
}

/// `POST /v1/snapshots/SET`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotAction {
    pub action: SnapshotActionKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotActionKind {
    /// Put it back as the data of its snap (a change).
    Restore,
    /// Delete it now.
    Forget,
}

/// The answer to forgetting a snapshot.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Forgotten {
    pub set: u64,
    /// What could not be deleted in users' trees, one line each.
    #[serde(default)]
    pub left: Vec<String>,
}

/// `POST /v1/snaps` with a JSON body: install NAME from the store.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoreInstall {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeAction {
    pub action: ChangeActionKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeActionKind {
    Abort,
}

impl ChangeAction {
    pub fn abort() -> Self {
        ChangeAction {
            action: ChangeActionKind::Abort,
        }
    }
}

/// The query of `GET /v1/changes`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ChangesQuery {
    #[serde(default)]
    pub select: Select,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snap: Option<String>,
}

/// Which changes `GET /v1/changes` lists.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    #[default]
    InProgress,
    Ready,
    All,
}

impl Select {
    pub fn as_str(self) -> &'static str {
        match self {
            Select::InProgress => "in-progress",
            Select::Ready => "ready",
            Select::All => "all",
        }
    }
}

/// The query of `POST /v1/snaps`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct InstallQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
}

/// Whether `key` is an acceptable `Idempotency-Key` header value: 1 to 128 printable ASCII
/// characters, no space (the daemon's check, here so it can be fuzzed without the daemon).
pub fn valid_idempotency_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= 128 && key.iter().all(|b| (0x21..0x7f).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Parses `doc` as `T`, serializes it back, and checks nothing was lost: the result parses
    /// to the same value and, timestamps aside (jiff may print fractions differently), is the
    /// same JSON.
    fn round_trip<T>(doc: &str) -> T
    where
        T: serde::de::DeserializeOwned + Serialize + PartialEq + fmt::Debug,
    {
        let parsed: T = serde_json::from_str(doc).expect("doc example parses");
        let back = serde_json::to_value(&parsed).unwrap();
        let again: T = serde_json::from_value(back.clone()).unwrap();
        assert_eq!(parsed, again);
        let mut want: Value = serde_json::from_str(doc).unwrap();
        let mut got = back;
        normalize_times(&mut want);
        normalize_times(&mut got);
        assert_eq!(want, got);
        parsed
    }

    fn normalize_times(v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Ok(t) = s.parse::<Timestamp>() {
                    *s = t.as_millisecond().to_string();
                }
            }
            Value::Array(a) => a.iter_mut().for_each(normalize_times),
            Value::Object(o) => o.values_mut().for_each(normalize_times),
            _ => {}
        }
    }

    #[test]
    fn store_trust_in_system_info() {
        let base = r#""version": "0.1.0", "api": "v1", "root": "/", "pid": 1,
            "started": "2026-11-21T20:15:03Z", "snaps": 0, "changes-in-progress": 0,
            "mount-mode": "loop", "tracking": "v2", "tracking-reason": "cgroup2",
            "services": "none", "services-reason": "not PID 1""#;
        // An older daemon: no store said, nothing to warn of.
        let old: SystemInfo = serde_json::from_str(&format!("{{{base}}}")).unwrap();
        assert_eq!(old.store, None);
        assert!(serde_json::to_value(&old).unwrap().get("store").is_none());
        let signed: SystemInfo = round_trip(&format!(
            r#"{{{base}, "store": {{"url": "https://s.example", "signed": true, "root": "/etc/refreshd/store-root.json"}}}}"#
        ));
        let store = signed.store.unwrap();
        assert_eq!(
            store.root.as_deref(),
            Some(std::path::Path::new("/etc/refreshd/store-root.json"))
        );
        assert_eq!(store.warning(), None);
        let unsigned: SystemInfo = round_trip(&format!(
            r#"{{{base}, "store": {{"url": "/srv/store", "signed": false}}}}"#
        ));
        assert_eq!(
            unsigned.store.unwrap().warning().unwrap(),
            "the store /srv/store is not verified (refreshd --insecure-unsigned-store): whoever serves it chooses what is installed; pin its root instead (docs/store.md)"
        );
    }

    #[test]
    fn system_info() {
        let info: SystemInfo = round_trip(
            r#"{
              "version": "0.1.0",
              "api": "v1",
              "root": "/",
              "pid": 4242,
              "started": "2026-11-21T20:15:03.120Z",
              "snaps": 3,
              "changes-in-progress": 1,
              "mount-mode": "loop",
              "tracking": "v1",
              "tracking-reason": "cgroup v1 freezer with the release agent",
              "services": "none",
              "services-reason": "systemd is not PID 1"
            }"#,
        );
        assert_eq!(info.mount_mode, MountMode::Loop);
        assert_eq!(info.tracking, "v1");
        assert_eq!(info.changes_in_progress, 1);
        assert_eq!(
            info.started,
            "2026-11-21T20:15:03.120Z".parse::<Timestamp>().unwrap()
        );
        let s = serde_json::to_string(&info).unwrap();
        assert!(s.contains(r#""started":"2026-11-21T20:15:03.120Z""#), "{s}");
    }

    #[test]
    fn snap() {
        let snap: Snap = round_trip(
            r#"{
              "name": "hello",
              "snap-name": "hello",
              "instance-key": null,
              "revision": "x1",
              "version": "1.0",
              "summary": "Says hello",
              "channel": null,
              "hold": null,
              "revisions": ["x1"],
              "apps": [{"name": "hello", "command": "bin/hello", "daemon": null}],
              "installed": "2026-11-21T20:15:03.120Z"
            }"#,
        );
        assert_eq!(snap.apps[0].command, "bin/hello");
        assert_eq!(snap.revisions, ["x1"]);
    }

    const CHANGE: &str = r#"{
      "id": 7,
      "kind": "install",
      "summary": "Install \"hello\" from file",
      "snap": "hello",
      "status": "Doing",
      "ready": false,
      "spawn-time": "2026-11-21T20:15:03.120Z",
      "ready-time": null,
      "error": null,
      "tasks": [
        {
          "id": 31,
          "kind": "prepare",
          "summary": "Prepare snap \"hello\" (x1)",
          "status": "Done",
          "progress": {"label": "", "done": 1, "total": 1},
          "log": ["2026-11-21T20:15:03Z INFO copied blob (4096 bytes)"],
          "retry": null,
          "wait": null,
          "spawn-time": "2026-11-21T20:15:03.120Z",
          "ready-time": "2026-11-21T20:15:03.170Z"
        }
      ]
    }"#;

    #[test]
    fn change_with_tasks() {
        let change: Change = round_trip(CHANGE);
        assert_eq!(change.status, Status::Doing);
        assert!(!change.ready);
        assert_eq!(change.tasks.len(), 1);
        assert_eq!(change.tasks[0].status, Status::Done);
        assert_eq!(change.tasks[0].progress.total, 1);
        assert!(change.tasks[0].ready_time.is_some());
    }

    #[test]
    fn change_in_a_list_has_no_tasks() {
        let mut v: Value = serde_json::from_str(CHANGE).unwrap();
        v.as_object_mut().unwrap().remove("tasks");
        // Absent optional fields parse too ("absent when unset").
        v.as_object_mut().unwrap().remove("ready-time");
        let change: Change = serde_json::from_value(v).unwrap();
        assert!(change.tasks.is_empty());
        assert_eq!(change.ready_time, None);
        let back = serde_json::to_value(&change).unwrap();
        assert!(back.get("tasks").is_none(), "{back}");
        assert_eq!(back["ready-time"], Value::Null);
    }

    #[test]
    fn retry_and_wait() {
        let retry: RetryInfo = round_trip(
            r#"{"count": 2, "reason": "loop device busy", "next-attempt": "2026-11-21T20:15:05Z"}"#,
        );
        assert_eq!(retry.count, 2);
        let wait: WaitInfo = round_trip(
            r#"{"event": "snap-idle:hello", "until": null, "reason": "waiting for 2 processes to exit"}"#,
        );
        assert_eq!(wait.until, None);
    }

    #[test]
    fn statuses_are_bare_words() {
        for s in [
            Status::Do,
            Status::Doing,
            Status::Done,
            Status::Undo,
            Status::Undoing,
            Status::Undone,
            Status::Error,
            Status::Hold,
            Status::Wait,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
            assert_eq!(s.to_string(), s.as_str());
        }
        let ready: Vec<_> = ["Done", "Undone", "Error", "Hold"]
            .iter()
            .map(|s| serde_json::from_value::<Status>(json!(s)).unwrap())
            .collect();
        assert!(ready.iter().all(|s| s.is_ready()));
        assert!(!Status::Wait.is_ready() && !Status::Undoing.is_ready());
        assert!(!Status::Done.is_failure() && Status::Undone.is_failure());
    }

    #[test]
    fn error_body() {
        let body: ErrorBody = round_trip(
            r#"{"error": {"kind": "conflict", "message": "snap \"hello\" has change 12 in progress; wait for it or abort it with: refreshctl abort 12", "change": 12}}"#,
        );
        assert_eq!(body.error.kind, ErrorKind::Conflict);
        assert_eq!(body.error.change, Some(12));

        // `change` appears only where the error is about one.
        let body = ErrorBody::new(ErrorKind::NotFound, "no snap \"x\"");
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": {"kind": "not-found", "message": "no snap \"x\""}})
        );
    }

    #[test]
    fn error_kinds() {
        for (word, kind, status) in [
            ("bad-request", ErrorKind::BadRequest, 400),
            ("invalid-snap", ErrorKind::InvalidSnap, 400),
            ("forbidden", ErrorKind::Forbidden, 403),
            ("not-found", ErrorKind::NotFound, 404),
            ("conflict", ErrorKind::Conflict, 409),
            ("too-large", ErrorKind::TooLarge, 413),
            ("internal", ErrorKind::Internal, 500),
            ("unavailable", ErrorKind::Unavailable, 503),
        ] {
            assert_eq!(
                serde_json::from_value::<ErrorKind>(json!(word)).unwrap(),
                kind
            );
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(word));
            assert_eq!(kind.http_status(), status);
        }
        let unknown: ErrorKind = serde_json::from_value(json!("quota-exceeded")).unwrap();
        assert_eq!(unknown, ErrorKind::Unknown);
    }

    #[test]
    fn request_bodies() {
        assert_eq!(round_trip::<ChangeRef>(r#"{"change": 7}"#).change, 7);
        assert_eq!(
            round_trip::<SnapAction>(r#"{"action": "remove"}"#),
            SnapAction::remove(false)
        );
        assert_eq!(
            round_trip::<ChangeAction>(r#"{"action": "abort"}"#),
            ChangeAction::abort()
        );
        assert!(serde_json::from_str::<SnapAction>(r#"{"action": "frobnicate"}"#).is_err());
        let q: ChangesQuery = serde_json::from_str(r#"{"snap": "hello"}"#).unwrap();
        assert_eq!(q.select, Select::InProgress);
        let q: ChangesQuery = serde_json::from_str(r#"{"select": "all"}"#).unwrap();
        assert_eq!(q.select, Select::All);
        assert_eq!(q.select.as_str(), "all");
    }
}
