//! The JSON shape of `GET /v1/snaps/NAME/status`: what a refresh of a snap waits for
//! (docs/api.md).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Change;

/// `GET /v1/snaps/NAME/status`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct SnapStatus {
    /// The instance name.
    pub name: String,
    /// The current revision; null while the snap's first install is under way.
    pub revision: Option<String>,
    /// The current revision's version; null with `revision`.
    pub version: Option<String>,
    /// How processes are tracked (as in `GET /v1/system-info`). With `none` they cannot be
    /// seen: `processes` is empty and a refresh does not wait.
    pub tracking: String,
    /// True while launches of the snap wait: a refresh is in its critical section, or holds
    /// new launches back while running apps drain (`refresh-pending-behavior: block`).
    pub inhibited: bool,
    /// The change in progress for the snap (without its tasks); null when there is none.
    pub change: Option<Change>,
    /// Set while that change waits for the snap's processes to exit.
    pub waiting: Option<AppsWait>,
    /// Every process of the snap now, from its cgroups, by pid. A refresh waits until there
    /// is none; it never stops them.
    pub processes: Vec<SnapProcess>,
    /// The processes of the snap's services, in their systemd units, where systemd is PID 1
    /// (empty elsewhere; absent from older daemons). A refresh stops and starts the services
    /// itself: it does not wait for these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<SnapProcess>,
    /// The snap's hold, as in `GET /v1/snaps/NAME`: `"forever"`, a time, or `"reverted"`;
    /// null when its refreshes are not held.
    #[serde(default)]
    pub hold: Option<String>,
    /// What an admin must know about where the snap's revisions come from: the store is not
    /// verified (`refreshd --insecure-unsigned-store`); null otherwise (absent from daemons
    /// older than this field). refreshctl says it on stderr.
    #[serde(default)]
    pub warning: Option<String>,
}

/// A change waiting for a snap's processes to exit.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct AppsWait {
    /// The waiting task (`wait-for-apps`, or a later task of the critical section that found
    /// apps started inside it after a reboot).
    pub task: u64,
    /// Since when: when the task became ready to run, i.e. when the tasks before it finished.
    #[serde(with = "crate::types::rfc3339")]
    pub since: Timestamp,
    /// The task's wait reason, as in its `wait` object.
    pub reason: String,
}

/// A process of a snap, as the kernel describes it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct SnapProcess {
    pub pid: u32,
    /// The real uid.
    pub uid: u32,
    /// The uid's user name; null when it has none.
    pub user: Option<String>,
    /// The command line, one element per argument; empty for a process that has none (a
    /// zombie). Null when withheld: the process is another user's, the caller is not an
    /// admin, and /proc is mounted with `hidepid`, which hides it from them there too.
    pub command: Option<Vec<String>>,
    /// The process name the kernel keeps (`/proc/PID/comm`, at most 15 bytes).
    pub comm: String,
    /// The systemd unit it is in (a scope of its user's or the system's manager, or a
    /// service), when systemd is PID 1; null otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// When it started; null if the kernel's boot time could not be read.
    #[serde(default, with = "crate::types::rfc3339::option")]
    pub started: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_as_documented() {
        let doc = r#"{
          "name": "hello",
          "revision": "x1",
          "version": "1.0",
          "tracking": "v2",
          "inhibited": false,
          "change": {
            "id": 7,
            "kind": "install",
            "summary": "Install \"hello\" (x2) from a file",
            "snap": "hello",
            "status": "Wait",
            "ready": false,
            "spawn-time": "2026-11-21T20:15:03.120Z",
            "ready-time": null,
            "error": null
          },
          "waiting": {
            "task": 45,
            "since": "2026-11-21T20:15:04.020Z",
            "reason": "waiting for 1 process to exit: pid 4242 (user alice): /snap/hello/x1/bin/hello --window"
          },
          "processes": [
            {
              "pid": 4242,
              "uid": 1000,
              "user": "alice",
              "command": ["/snap/hello/x1/bin/hello", "--window"],
              "comm": "hello",
              "started": "2026-11-21T19:02:11Z"
            },
            {
              "pid": 4250,
              "uid": 1001,
              "user": null,
              "command": null,
              "comm": "hello",
              "started": null
            }
          ]
        }"#;
        let s: SnapStatus = serde_json::from_str(doc).unwrap();
        assert_eq!(s.change.as_ref().unwrap().id, 7);
        assert_eq!(s.waiting.as_ref().unwrap().task, 45);
        assert_eq!(s.processes[1].command, None);
        let back: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(back["processes"][0]["command"][1], "--window");
        assert_eq!(back["processes"][1]["command"], serde_json::Value::Null);
        assert!(back["change"].get("tasks").is_none(), "{back}");
        let again: SnapStatus = serde_json::from_value(back).unwrap();
        assert_eq!(again, s);
    }
}
