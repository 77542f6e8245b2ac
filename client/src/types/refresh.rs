//! The JSON shapes of refreshing several snaps, of holds, and of `GET /v1/refresh`
//! (docs/api.md, "Refreshing many snaps").

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use refreshd_snap::text::{format_duration, parse_duration, DurationError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How long to hold refreshes: `forever`, or a duration (`2h`, `7d`, `1h30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Forever,
    For(Duration),
}

impl Hold {
    /// The hold as it is stored and shown, starting `now`.
    pub fn until(self, now: Timestamp) -> HoldUntil {
        match self {
            Hold::Forever => HoldUntil::Forever,
            // Whole seconds read better; the parser caps durations far below jiff's range,
            // and a time past it is forever in all but name.
            Hold::For(d) => {
                Timestamp::from_second(now.as_second().saturating_add(d.as_secs() as i64))
                    .map(HoldUntil::Time)
                    .unwrap_or(HoldUntil::Forever)
            }
        }
    }
}

impl FromStr for Hold {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "forever" {
            return Ok(Hold::Forever);
        }
        parse_duration(s).map(Hold::For)
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Forever => f.write_str("forever"),
            Hold::For(d) => f.write_str(&format_duration(*d)),
        }
    }
}

impl Serialize for Hold {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hold {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A hold as the snaps table stores it and [`crate::types::Snap::hold`] shows it: `forever`
/// or an RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldUntil {
    Forever,
    Time(Timestamp),
    /// Since the snap was reverted: until a refresh names it, or its hold is lifted.
    Reverted,
}

impl HoldUntil {
    /// None when `s` is neither `forever`, `reverted` nor a time.
    pub fn parse(s: &str) -> Option<HoldUntil> {
        match s {
            "forever" => Some(HoldUntil::Forever),
            REVERTED => Some(HoldUntil::Reverted),
            _ => s.parse().ok().map(HoldUntil::Time),
        }
    }

    /// The hold a snap's stored `hold` puts on it at `now`: None for none, an expired one, or
    /// one that does not parse.
    pub fn active(stored: Option<&str>, now: Timestamp) -> Option<HoldUntil> {
        stored
            .and_then(HoldUntil::parse)
            .filter(|h| h.is_active(now))
    }

    /// An expired hold counts as no hold.
    pub fn is_active(self, now: Timestamp) -> bool {
        match self {
            HoldUntil::Forever | HoldUntil::Reverted => true,
            HoldUntil::Time(t) => t > now,
        }
    }
}

/// The hold a revert puts on its snap (the `hold` of `GET /v1/snaps`).
pub const REVERTED: &str = "reverted";

impl fmt::Display for HoldUntil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldUntil::Forever => f.write_str("forever"),
            // The API's one shape of a time (crate::types::rfc3339).
            HoldUntil::Time(t) => write!(f, "{t:.3}"),
            HoldUntil::Reverted => f.write_str(REVERTED),
        }
    }
}

/// `POST /v1/refresh`: refresh, hold or unhold `names` (every installed snap when empty).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RefreshRequest {
    pub action: RefreshActionKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// For `hold`: how long (default `forever`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// For `refresh` of exactly one name: the channel to refresh from (and follow from then
    /// on), instead of the snap's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshActionKind {
    Refresh,
    Hold,
    Unhold,
}

impl RefreshRequest {
    pub fn refresh(names: &[String], channel: Option<&str>) -> Self {
        RefreshRequest {
            action: RefreshActionKind::Refresh,
            names: names.to_vec(),
            hold: None,
            channel: channel.map(str::to_owned),
        }
    }

    pub fn hold(names: &[String], hold: Hold) -> Self {
        RefreshRequest {
            action: RefreshActionKind::Hold,
            names: names.to_vec(),
            hold: Some(hold),
            channel: None,
        }
    }

    pub fn unhold(names: &[String]) -> Self {
        RefreshRequest {
            action: RefreshActionKind::Unhold,
            names: names.to_vec(),
            hold: None,
            channel: None,
        }
    }
}

/// `GET /v1/refresh`: what refreshing every snap would do; nothing is changed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub struct RefreshPlan {
    /// Snaps whose channel has a newer revision, sorted by name.
    pub updates: Vec<Update>,
    /// Why each other snap has no update (up to date, not from a store, store errors).
    #[serde(default)]
    pub notes: Vec<RefreshNote>,
}

/// A snap with a newer revision in its channel.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Update {
    pub name: String,
    /// The current revision and its version.
    pub revision: String,
    pub version: String,
    pub channel: String,
    /// The channel's revision in the store and its version.
    pub store_revision: String,
    pub store_version: String,
    /// The snap's hold, when one is in force: refreshing every snap skips it.
    pub hold: Option<String>,
    /// The snap's change in progress, if any: refreshing skips it until that is ready.
    pub change: Option<u64>,
}

/// What refreshing did, or would do, about one snap.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct RefreshNote {
    pub snap: String,
    pub kind: NoteKind,
    /// One line for a person.
    pub message: String,
    /// `refreshing`: the change made; `busy`: the change in progress.
    #[serde(default)]
    pub change: Option<u64>,
    /// `held`: the hold that skipped it; `refreshing`: the hold of a snap refreshed because it
    /// was named.
    #[serde(default)]
    pub hold: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum NoteKind {
    /// A refresh change was made (`change`).
    Refreshing,
    /// The channel has no newer revision.
    UpToDate,
    /// Skipped: refreshes of the snap are held (`hold`).
    Held,
    /// Skipped: the snap has a change in progress (`change`).
    Busy,
    /// Skipped: installed from a file, it follows no store channel.
    NotFromStore,
    /// The store could not say (unreachable, no such snap or channel, a bad index).
    Error,
    /// A kind this client does not know (a newer daemon).
    #[serde(other)]
    Unknown,
}

/// The answer to `POST /v1/refresh {"action": "refresh"}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub struct RefreshResult {
    /// The refresh changes made, one per snap.
    pub changes: Vec<u64>,
    /// One note per snap considered.
    #[serde(default)]
    pub notes: Vec<RefreshNote>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn holds_parse_print_and_end() {
        assert_eq!("forever".parse::<Hold>().unwrap(), Hold::Forever);
        let h: Hold = "1h30m".parse().unwrap();
        assert_eq!(h, Hold::For(Duration::from_secs(5400)));
        assert_eq!(h.to_string(), "1h30m");
        assert!("Forever".parse::<Hold>().is_err());
        assert!("1y".parse::<Hold>().is_err());
        assert_eq!(serde_json::to_value(h).unwrap(), json!("1h30m"));
        assert!(serde_json::from_value::<Hold>(json!("soon")).is_err());

        let now: Timestamp = "2026-11-21T20:15:03.120Z".parse().unwrap();
        let until = h.until(now);
        assert_eq!(until.to_string(), "2026-11-21T21:45:03.000Z");
        assert_eq!(HoldUntil::parse(&until.to_string()), Some(until));
        assert!(until.is_active(now));
        assert!(
            !until.is_active("2026-11-21T21:45:03Z".parse().unwrap()),
            "expired"
        );
        assert_eq!(Hold::Forever.until(now), HoldUntil::Forever);
        assert!(HoldUntil::Forever.is_active(now));
        assert_eq!(HoldUntil::parse("someday"), None);
    }

    #[test]
    fn auto_refresh_in_system_info_is_absent_when_off() {
        let mut info: crate::types::SystemInfo = serde_json::from_value(json!({
            "version": "0.1.0", "api": "v1", "root": "/", "pid": 1,
            "started": "2026-11-21T20:15:03Z", "snaps": 0, "changes-in-progress": 0,
            "mount-mode": "loop"
        }))
        .unwrap();
        assert_eq!(info.auto_refresh, None);
        let v = serde_json::to_value(&info).unwrap();
        assert!(
            v.get("auto-refresh").is_none() && v.get("next-auto-refresh").is_none(),
            "{v}"
        );
        info.auto_refresh = Some("6h".into());
        info.next_auto_refresh = Some("2026-11-22T02:15:03Z".parse().unwrap());
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["auto-refresh"], "6h");
        assert_eq!(v["next-auto-refresh"], "2026-11-22T02:15:03.000Z");
        assert!(v.get("last-auto-refresh").is_none(), "{v}");
    }

    #[test]
    fn requests_and_answers() {
        let req = RefreshRequest::hold(&["a".into()], Hold::For(Duration::from_secs(7200)));
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"action": "hold", "names": ["a"], "hold": "2h"})
        );
        let all: RefreshRequest = serde_json::from_value(json!({"action": "refresh"})).unwrap();
        assert_eq!(all, RefreshRequest::refresh(&[], None));
        assert!(
            serde_json::from_value::<RefreshRequest>(json!({"action": "hold", "hold": "2"}))
                .is_err()
        );

        let doc = json!({
            "changes": [12],
            "notes": [
                {"snap": "a", "kind": "refreshing", "message": "refreshing", "change": 12, "hold": "forever"},
                {"snap": "b", "kind": "held", "message": "held", "change": null, "hold": "2026-11-21T21:45:03Z"},
                {"snap": "c", "kind": "something-new", "message": "?"}
            ]
        });
        let r: RefreshResult = serde_json::from_value(doc).unwrap();
        assert_eq!(r.notes[0].kind, NoteKind::Refreshing);
        assert_eq!(r.notes[1].kind, NoteKind::Held);
        assert_eq!(r.notes[2].kind, NoteKind::Unknown);
        assert_eq!(
            serde_json::to_value(NoteKind::NotFromStore).unwrap(),
            json!("not-from-store")
        );
    }
}
