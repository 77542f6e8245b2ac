//! Turning untrusted text into safe one-line messages.
//!
//! Names, snap.yaml contents and tool output all come from the snap file, which anyone may
//! upload; escaping and truncating them keeps an error message from rewriting a terminal or
//! flooding a log.

/// How many characters of a rejected input an error message shows.
const QUOTE_MAX_CHARS: usize = 60;

/// How long a flattened message may grow before it is cut.
const ONE_LINE_MAX_CHARS: usize = 300;

/// Quotes untrusted input: escaped with `{:?}` and truncated to a short prefix.
pub fn quote(s: &str) -> String {
    let count = s.chars().count();
    if count <= QUOTE_MAX_CHARS {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(QUOTE_MAX_CHARS).collect();
        format!("{head:?}... ({count} characters)")
    }
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
        // escape_debug leaves printable characters alone and escapes the rest (controls,
        // bidi overrides), but it would also escape quotes, which are fine here.
        if c == '"' || c == '\'' || c == '\\' {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
        chars += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_flattens_escapes_and_caps() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("  two\n  lines\n", "two lines"),
            ("tab\tand\r\nnewline", "tab and newline"),
            ("esc\u{1b}[2J", "esc\\u{1b}[2J"),
            ("nul\0", "nul\\0"),
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
    fn quote_escapes_and_truncates() {
        assert_eq!(quote("Foo"), "\"Foo\"");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let q = quote(&"a".repeat(5000));
        assert!(q.ends_with("... (5000 characters)") && q.len() < 90, "{q}");
    }
}
