//! Every request body, query string, path parameter and header value the daemon reads, through
//! the same deserializers (`serde_json` for bodies, `serde_urlencoded` as axum's `Query`) and the
//! same checks the handlers in refreshd/src/api apply after them (the functions are those of
//! `refreshd_snap`, `refreshd_store` and `refreshd_client`; the daemon itself is not linked).
//!
//! The first byte picks the endpoint; the rest is `PATH-PARAMETER 0xFF BODY` (0xFF never
//! occurs in UTF-8, so it cannot be part of either).
//!
//! Properties: no panic; what a handler accepts is safe to use (names are plain path
//! components, channels plain words), what the client serializes the daemon reads back as the
//! same value, and the refusals of the name, channel and duration rules are one line.

#![no_main]

use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use refreshd_client::types::{
    valid_idempotency_key, ChangeAction, ChangesQuery, Hold, HoldUntil, InstallQuery,
    RefreshActionKind, RefreshRequest, SnapAction, SnapActionKind, StoreInstall,
};
use refreshd_snap::name::InstanceName;
use serde::de::DeserializeOwned;
use serde::Serialize;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (param, body) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let param = std::str::from_utf8(param).unwrap_or("");
    match which % 8 {
        // POST /v1/snaps/{name}: remove, refresh (store_change) or revert.
        0 => {
            if let Some(act) = json::<SnapAction>(body) {
                round_trip_json(&act);
                if act.action == SnapActionKind::Refresh && instance(param) {
                    if let Some(ch) = &act.channel {
                        channel(ch);
                    }
                }
            }
        }
        // POST /v1/snaps with a JSON body: install from the store (store_change).
        1 => {
            if let Some(req) = json::<StoreInstall>(body) {
                round_trip_json(&req);
                if instance(&req.name) {
                    if let Some(ch) = &req.channel {
                        channel(ch);
                    }
                }
            }
        }
        // POST /v1/snaps?instance-name=...: an upload.
        2 => {
            if let Some(q) = query::<InstallQuery>(body) {
                round_trip_query(&q);
                if let Some(n) = &q.instance_name {
                    instance(n);
                }
            }
        }
        // POST /v1/refresh: refresh, hold, unhold. The parameter is a `hold` value on its own.
        3 => {
            match param.parse::<Hold>() {
                Ok(hold) => held(hold),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        !msg.contains(['\n', '\r']),
                        "duration refusal is not one line: {msg:?}"
                    );
                }
            }
            if let Some(req) = json::<RefreshRequest>(body) {
                round_trip_json(&req);
                if req.hold.is_some() && req.action != RefreshActionKind::Hold {
                    return; // refused by the handler
                }
                if let Some(hold) = req.hold {
                    held(hold);
                }
                for n in &req.names {
                    if !instance(n) {
                        return; // one bad name refuses the whole request
                    }
                }
            }
        }
        // POST /v1/changes/{id}: abort.
        4 => {
            if let Ok(id) = param.parse::<u64>() {
                assert_eq!(id.to_string().parse::<u64>(), Ok(id));
            }
            if let Some(act) = json::<ChangeAction>(body) {
                round_trip_json(&act);
            }
        }
        // GET /v1/changes?select=...&snap=...
        5 => {
            if let Some(q) = query::<ChangesQuery>(body) {
                round_trip_query(&q);
            }
        }
        // The Idempotency-Key header of every POST that makes a change.
        6 => {
            if valid_idempotency_key(body) {
                assert!(!body.is_empty() && body.len() <= 128);
                assert!(body.iter().all(|b| b.is_ascii_graphic()), "key {body:?}");
            }
        }
        // GET /v1/snaps/{name}/status: only a valid instance name gets near a path.
        _ => {
            if let Ok(s) = std::str::from_utf8(body) {
                instance(s);
            }
        }
    }
});

/// `json_body`: the body as `T` (a refusal's text is folded to one line by `ApiError::new`).
fn json<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice(body).ok()
}

/// axum's `Query`: serde_urlencoded over the raw query string.
fn query<T: DeserializeOwned>(q: &[u8]) -> Option<T> {
    serde_urlencoded::from_str(std::str::from_utf8(q).ok()?).ok()
}

/// A name the handlers accept (`InstanceName` parse) is a plain path component.
fn instance(n: &str) -> bool {
    match n.parse::<InstanceName>() {
        Ok(parsed) => {
            assert_eq!(parsed.as_str(), n);
            assert!(
                (2..=refreshd_runctl::MAX_INSTANCE_NAME).contains(&n.len()),
                "name {n:?}"
            );
            assert!(n != "." && n != "..", "name {n:?}");
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_".contains(&c)),
                "name {n:?} is not a plain path component"
            );
            assert!(
                refreshd_runctl::valid_instance_name(n.as_bytes()),
                "launcher refuses {n:?}"
            );
            true
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains(['\n', '\r']),
                "name refusal is not one line: {msg:?}"
            );
            false
        }
    }
}

/// A channel the handlers accept (`validate_channel`) is plain printable ASCII.
fn channel(ch: &str) {
    match refreshd_store::validate_channel(ch) {
        Ok(()) => {
            assert!(!ch.is_empty() && ch.len() <= refreshd_store::MAX_CHANNEL_LEN);
            assert!(
                ch.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b)),
                "channel {ch:?}"
            );
            assert!(
                !ch.starts_with('/') && !ch.ends_with('/') && !ch.contains("//"),
                "channel {ch:?}"
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains(['\n', '\r']),
                "channel refusal is not one line: {msg:?}"
            );
        }
    }
}

/// A hold the daemon accepts reads back as written, and never ends before it starts.
fn held(hold: Hold) {
    let shown = hold.to_string();
    assert_eq!(
        shown.parse::<Hold>().ok(),
        Some(hold),
        "hold {shown:?} does not read back"
    );
    let now = Timestamp::from_second(1_800_000_000).expect("a valid time");
    let until = hold.until(now);
    match until {
        HoldUntil::Forever => {}
        HoldUntil::Time(t) => assert!(t > now, "hold {shown} ends at {t}, before it starts"),
        HoldUntil::Reverted => panic!("a hold asked for ({shown}) read back as a revert's"),
    }
    // The stored form parses back (the snaps table keeps it as text).
    assert_eq!(HoldUntil::parse(&until.to_string()), Some(until));
}

/// What the client sends is what the daemon reads.
fn round_trip_json<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let s = serde_json::to_string(v).expect("request serializes");
    let back: T = serde_json::from_str(&s).expect("serialized request parses");
    assert_eq!(&back, v, "{s}");
}

fn round_trip_query<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let s = serde_urlencoded::to_string(v).expect("query serializes");
    let back: T = serde_urlencoded::from_str(&s).expect("serialized query parses");
    assert_eq!(&back, v, "{s}");
}
