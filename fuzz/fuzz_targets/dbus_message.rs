//! confine-hook's D-Bus message parser (`confine_hook::dbus`): what the setuid launcher reads
//! from a systemd manager's private socket, which for the user's manager is any socket the
//! user put at /run/user/UID/systemd/private.
//!
//! The input is the byte stream as read from the socket: messages are parsed one after another
//! as `Conn` does, and each one's body decoded against its signature.
//!
//! Properties: no panic (no out-of-bounds access, no overflow: debug assertions are on); a
//! parsed message is at least the 16-byte fixed header, at most `MAX_MESSAGE` and the input
//! long; any shorter prefix of it asks for more bytes (never a refusal, never another message);
//! a message has the header fields its kind requires and a non-zero serial; an object path
//! starts with `/`; a body decodes to nothing exactly when the signature is empty.

#![no_main]

use confine_hook::dbus::{parse_message, ERROR, MAX_MESSAGE, METHOD_CALL, METHOD_RETURN, SIGNAL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((m, n))) = parse_message(rest) {
        assert!(
            (16..=MAX_MESSAGE.min(rest.len())).contains(&n),
            "message length {n}"
        );
        for short in [n - 1, n / 2] {
            assert!(
                matches!(parse_message(&rest[..short]), Ok(None)),
                "a {short}-byte prefix of a {n}-byte message"
            );
        }
        assert_ne!(m.serial, 0);
        let required = match m.kind {
            METHOD_CALL => m.path.is_some() && m.member.is_some(),
            METHOD_RETURN => m.reply_serial.is_some(),
            ERROR => m.error_name.is_some() && m.reply_serial.is_some(),
            SIGNAL => m.path.is_some() && m.interface.is_some() && m.member.is_some(),
            _ => true,
        };
        assert!(required, "kind {} without its header fields: {m:?}", m.kind);
        assert!(m.path.as_deref().is_none_or(|p| p.starts_with('/')));
        if let Ok(args) = m.args() {
            assert_eq!(args.is_empty(), m.signature.is_empty(), "{m:?}");
        }
        rest = &rest[n..];
    }
});
