//! Turning untrusted text into safe one-line messages.
//!
//! Names, snap.yaml contents and tool output all come from the snap file, which anyone may
//! upload; command lines and file names come from users; indexes from the store. Escaping and
//! truncating them keeps a message from rewriting a terminal, forging a line of a log, or
//! flooding either. [`escapes`] is the one rule of what is escaped, for every program of the
//! project: [`printable`] applies it to text shown to people (the daemon's task logs, wait
//! reasons and log lines, refreshctl's output), [`one_line`] and [`quote`] to messages,
//! [`json_printable`] to JSON that goes to a terminal. Durations (`2h`, `1h30m`) are read and
//! written here too, one syntax for the daemon's options and the command line.

use std::borrow::Cow;
use std::time::Duration;

/// How many characters of a rejected input an error message shows.
const QUOTE_MAX_CHARS: usize = 60;

/// How long a flattened message may grow before it is cut.
const ONE_LINE_MAX_CHARS: usize = 300;

/// Whether `c` must not reach a terminal or a log as it is: control characters (C0 — newline,
/// carriage return, escape —, DEL, C1 — a lone CSI is a terminal command too), the invisible
/// formatting characters that reorder or hide text (bidirectional overrides, embeddings and
/// isolates, zero-width characters, the byte-order mark, interlinear annotations, tags), and
/// the Unicode line and paragraph separators.
pub fn escapes(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

/// `s` with every character [`escapes`] names written as an escape (`\n`, `\r`, `\t`,
/// `\u{1b}`, `\u{202e}`), everything else as it is: what a user, a store or a snap controls,
/// shown to people. Borrowed when there is nothing to escape; escaping twice changes nothing.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(escapes) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        push_printable(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_printable(out: &mut String, c: char) {
    if escapes(c) {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

/// JSON text (as serde_json writes it) with the characters [`escapes`] names that JSON leaves
/// as they are (DEL, C1, the formatting characters) written as `\uXXXX`: the same value, safe
/// to print on a terminal. Such characters only occur inside JSON strings, where `\uXXXX`
/// means the character itself; ASCII controls below space are left alone, since serde_json
/// escapes them in strings and outside them they are the text's own newlines and indents.
pub fn json_printable(json: &str) -> Cow<'_, str> {
    let raw_in_json = |c: char| c >= ' ' && escapes(c);
    if !json.chars().any(raw_in_json) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw_in_json(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Quotes untrusted input: escaped with `{:?}` (and what `{:?}` leaves, per [`escapes`]) and
/// truncated to a short prefix.
pub fn quote(s: &str) -> String {
    let count = s.chars().count();
    let quoted = if count <= QUOTE_MAX_CHARS {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(QUOTE_MAX_CHARS).collect();
        format!("{head:?}... ({count} characters)")
    };
    printable(&quoted).into_owned()
}

/// Flattens a possibly multi-line message (from a library or a tool) to one line: whitespace
/// runs become one space, other unprintable characters are escaped, and the result is capped.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(ONE_LINE_MAX_CHARS + 8));
    let mut chars = 0;
    let mut pending_space = false;
    for c in s.trim().chars() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if chars >= ONE_LINE_MAX_CHARS {
            out.push_str("...");
            return out;
        }
        if pending_space {
            out.push(' ');
            chars += 1;
            pending_space = false;
        }
        push_printable(&mut out, c);
        chars += 1;
    }
    out
}

/// The longest duration [`parse_duration`] accepts: 100 years (36500d). A time that far ahead
/// still fits every clock; beyond it, what is meant is "forever".
pub const DURATION_MAX: Duration = Duration::from_secs(36_500 * 86_400);

/// The units of a duration, largest first, with their length in seconds.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// A duration that [`parse_duration`] refused; the message says what is wrong and shows the
/// syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {}: {reason}; write a number and a unit (s, m, h, d) like 30s, 15m, 2h, 7d or 1h30m", quote(.input))]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a duration written as numbers with units, largest unit first, each unit at most once:
/// `30s`, `15m`, `2h`, `7d`, `1h30m`, `1d12h`. Zero and more than [`DURATION_MAX`] are refused.
///
/// One syntax for every duration refreshd and refreshctl take (`refreshd --auto-refresh`,
/// `refreshctl refresh --hold`), so what works in one place works in the other.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: s.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total: u64 = 0;
    // Index into UNITS of the next unit allowed: each unit must be smaller than the last.
    let mut next_unit = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let (number, tail) = rest.split_at(digits);
        let mut chars = tail.chars();
        let Some(unit) = chars.next() else {
            return Err(err("the last number has no unit"));
        };
        let Some(pos) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(err("unknown unit"));
        };
        if pos < next_unit {
            return Err(err("units must go from largest to smallest, each once"));
        }
        next_unit = pos + 1;
        let n: u64 = number.parse().map_err(|_| err("too long"))?;
        total = n
            .checked_mul(UNITS[pos].1)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| err("too long"))?;
        rest = chars.as_str();
    }
    if total == 0 {
        return Err(err("it must be longer than zero"));
    }
    let d = Duration::from_secs(total);
    if d > DURATION_MAX {
        return Err(err("it is longer than 36500d (100 years)"));
    }
    Ok(d)
}

/// Writes a duration the way [`parse_duration`] reads it (`1h30m`; whole seconds, `0s` for
/// less than one).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, len) in UNITS {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let min = 60;
        let hour = 60 * min;
        let day = 24 * hour;
        let cases: &[(&str, u64)] = &[
            ("1s", 1),
            ("30s", 30),
            ("15m", 15 * min),
            ("2h", 2 * hour),
            ("7d", 7 * day),
            ("1h30m", hour + 30 * min),
            ("1d12h", day + 12 * hour),
            ("1d2h3m4s", day + 2 * hour + 3 * min + 4),
            ("90m", 90 * min),
            ("0h5m", 5 * min),
            ("36500d", 36_500 * day),
        ];
        for (input, secs) in cases {
            let d = parse_duration(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(d, Duration::from_secs(*secs), "{input}");
            // What format_duration writes parses back to the same.
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{input}");
        }
        assert_eq!(format_duration(Duration::from_secs(90 * min)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(day + 4)), "1d4s");
        assert_eq!(format_duration(Duration::from_millis(500)), "0s");
    }

    #[test]
    fn bad_durations_say_why() {
        let cases: &[(&str, &str)] = &[
            ("", "it is empty"),
            ("2", "the last number has no unit"),
            ("1h30", "the last number has no unit"),
            ("h", "expected a number"),
            ("-1h", "expected a number"),
            ("+1h", "expected a number"),
            ("1.5h", "unknown unit"),
            ("2x", "unknown unit"),
            ("2H", "unknown unit"),
            ("2 h", "unknown unit"),
            (" 2h", "expected a number"),
            ("2h ", "expected a number"),
            ("1w", "unknown unit"),
            ("forever", "expected a number"),
            ("30m1h", "units must go from largest to smallest, each once"),
            ("1h1h", "units must go from largest to smallest, each once"),
            ("0s", "it must be longer than zero"),
            ("0d0h", "it must be longer than zero"),
            ("36501d", "it is longer than 36500d (100 years)"),
            ("99999999999999999999s", "too long"),
            ("999999999999999999d", "too long"),
        ];
        for (input, reason) in cases {
            let e = parse_duration(input).expect_err(input);
            assert_eq!(e.reason, *reason, "{input:?}");
            let msg = e.to_string();
            assert!(!msg.contains('\n') && msg.contains("1h30m"), "{msg}");
        }
        assert_eq!(
            parse_duration("2x").unwrap_err().to_string(),
            "invalid duration \"2x\": unknown unit; write a number and a unit (s, m, h, d) like 30s, 15m, 2h, 7d or 1h30m"
        );
    }

    #[test]
    fn one_line_flattens_escapes_and_caps() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("  two\n  lines\n", "two lines"),
            ("tab\tand\r\nnewline", "tab and newline"),
            ("esc\u{1b}[2J", "esc\\u{1b}[2J"),
            ("nul\0", "nul\\u{0}"),
            ("bidi\u{202e}x", "bidi\\u{202e}x"),
            ("say \"hi\" \\ 'x'", "say \"hi\" \\ 'x'"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(one_line(input), *want, "input {input:?}");
        }
        let long = one_line(&"x".repeat(10_000));
        assert!(long.ends_with("...") && long.len() < 320, "{}", long.len());
    }

    #[test]
    fn printable_escapes_what_could_drive_a_terminal_or_forge_a_line() {
        let cases: &[(&str, &str)] = &[
            (
                "plain text, é, 日本, \"quotes\" \\ 'x'",
                "plain text, é, 日本, \"quotes\" \\ 'x'",
            ),
            (
                "\u{1b}[2J\u{1b}]0;pwned\u{7}",
                "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}",
            ),
            ("a\r\nroot: done\tx", "a\\r\\nroot: done\\tx"),
            ("csi\u{9b}31m del\u{7f}", "csi\\u{9b}31m del\\u{7f}"),
            ("rtl\u{202e}gpj.exe", "rtl\\u{202e}gpj.exe"),
            (
                "zw\u{200b}j\u{2066}\u{feff}\u{2028}",
                "zw\\u{200b}j\\u{2066}\\u{feff}\\u{2028}",
            ),
            ("tag\u{e0041}", "tag\\u{e0041}"),
        ];
        for (input, want) in cases {
            let got = printable(input);
            assert_eq!(got, *want, "input {input:?}");
            assert!(!got.chars().any(escapes), "{got:?}");
            // Idempotent: escaping what is escaped changes nothing.
            assert_eq!(printable(&got), got);
        }
        assert!(matches!(printable("fine"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_printable_keeps_the_value() {
        let value = serde_json::json!({"cmd": ["\u{1b}[2J", "a\u{9b}b\u{7f}\u{202e}\u{e0041}\n"]});
        let json = serde_json::to_string_pretty(&value).unwrap();
        let safe = json_printable(&json);
        assert!(!safe.chars().any(|c| c != '\n' && escapes(c)), "{safe}");
        assert!(
            safe.contains("\\u009b") && safe.contains("\\u202e"),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn quote_escapes_and_truncates() {
        assert_eq!(quote("bidi\u{202e}"), "\"bidi\\u{202e}\"");
        assert_eq!(quote("Foo"), "\"Foo\"");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let q = quote(&"a".repeat(5000));
        assert!(q.ends_with("... (5000 characters)") && q.len() < 90, "{q}");
    }
}
