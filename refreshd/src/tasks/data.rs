//! What each task remembers in its own `data` across a crash and between its runs: one type per
//! task kind that keeps anything. The JSON names are those stored by earlier versions, so a
//! change in progress survives an upgrade.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// wait-for-apps: the refresh-pending hook started, and the users told the refresh is pending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WaitForApps {
    /// Recorded before the hook starts: at most once per change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_pending_hook: Option<HookStarted>,
    /// By uid (as a string: a JSON object's key).
    #[serde(
        default,
        rename = "notified",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub told: BTreeMap<String, Told>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStarted {
    /// The revision whose hook ran.
    pub revision: String,
    /// Unix ms.
    pub at: i64,
}

/// One user's record of a pending refresh's notices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Told {
    /// When the last notice (first or reminder) was recorded, unix ms.
    pub at: i64,
    #[serde(default)]
    pub reminders: u32,
}

/// lift-inhibition: who was told the refresh is done, and who that it was undone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LiftInhibition {
    #[serde(
        default,
        rename = "notified-done",
        skip_serializing_if = "Option::is_none"
    )]
    pub done: Option<ToldUsers>,
    #[serde(
        default,
        rename = "notified-undone",
        skip_serializing_if = "Option::is_none"
    )]
    pub undone: Option<ToldUsers>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToldUsers {
    pub uids: Vec<u32>,
    /// Unix ms.
    pub at: i64,
}

/// setup-data: when this change's copy stood complete under its final name (unix ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<i64>,
}

/// stop-services: what was running (and, on remove, enabled) before it stopped them, so that an
/// undo or start-services starts the same again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StopServices {
    /// Units that were active before they were stopped; None until recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Vec<String>>,
    /// Units that were enabled (recorded, and disabled, only when the snap is removed).
    #[serde(default)]
    pub enabled: Vec<String>,
}

/// restore-data: the snap's data was set aside (once the set's data stands in its place the
/// two cannot be told apart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreData {
    #[serde(default)]
    pub set_aside: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_stored_by_earlier_versions_reads_back() {
        let w: WaitForApps = serde_json::from_value(json!({
            "refresh-pending-hook": {"revision": "3", "at": 5},
            "notified": {"1000": {"at": 7}}
        }))
        .unwrap();
        assert_eq!(w.refresh_pending_hook.unwrap().revision, "3");
        assert_eq!(
            w.told["1000"],
            Told {
                at: 7,
                reminders: 0
            }
        );
        let l: LiftInhibition = serde_json::from_value(json!({
            "notified-done": {"uids": [1000], "at": 9}
        }))
        .unwrap();
        assert_eq!(l.done.unwrap().uids, [1000]);
        let s: SetupData = serde_json::from_value(json!({"made": 11})).unwrap();
        assert_eq!(s.made, Some(11));
        let st: StopServices =
            serde_json::from_value(json!({"active": ["a.service"], "enabled": []})).unwrap();
        assert_eq!(st.active.unwrap(), ["a.service"]);
        assert_eq!(
            serde_json::from_value::<StopServices>(json!({}))
                .unwrap()
                .active,
            None
        );
    }
}
