//! `$NAME` and `${NAME}` in `environment:` values (snap.yaml's, an app's, a hook's), expanded
//! one way by the launcher (apps) and the daemon (hooks).
//!
//! As in snapd (`os.Expand` over the environment built so far): a name is an ASCII letter or
//! `_` followed by letters, digits and `_`; `$NAME` takes the longest such run; a name with no
//! value expands to nothing. Stricter than snapd where snapd follows the shell's special cases
//! — there are no special variables in a snap's environment, so those cases only eat text: a
//! `$` that does not start a name (`$$`, `$1`, `$-`, a `$` at the end) and a `${` without a
//! valid name and its `}` (`${`, `${}`, `${1A}`, `${A B}`) stay as written, where snapd drops
//! them or expands them to nothing.

/// Expands `value`, handing the result to `out` piece by piece, in order: the literal runs of
/// `value` and the values `lookup` gives for the names it refers to (`None`: nothing).
pub fn expand<V: AsRef<[u8]>>(
    value: &[u8],
    mut lookup: impl FnMut(&[u8]) -> Option<V>,
    mut out: impl FnMut(&[u8]),
) {
    // Start of the literal run not yet handed out.
    let mut lit = 0;
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'$' {
            if let Some((name, len)) = name_at(&value[i + 1..]) {
                if lit < i {
                    out(&value[lit..i]);
                }
                if let Some(v) = lookup(name) {
                    if !v.as_ref().is_empty() {
                        out(v.as_ref());
                    }
                }
                i += 1 + len;
                lit = i;
                continue;
            }
        }
        i += 1;
    }
    if lit < value.len() {
        out(&value[lit..]);
    }
}

/// The name that `rest`, what follows a `$`, refers to, and how many bytes of `rest` it takes.
fn name_at(rest: &[u8]) -> Option<(&[u8], usize)> {
    match *rest.first()? {
        b'{' => {
            let end = rest.iter().position(|&c| c == b'}')?;
            let name = &rest[1..end];
            let valid =
                name.first().is_some_and(|&c| starts_name(c)) && name.iter().all(|&c| in_name(c));
            valid.then_some((name, end + 1))
        }
        c if starts_name(c) => {
            let len = rest.iter().take_while(|&&c| in_name(c)).count();
            Some((&rest[..len], len))
        }
        _ => None,
    }
}

fn starts_name(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn in_name(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `value` expanded against `vars`, into a fixed buffer (no allocation here either).
    fn run(value: &str, vars: &[(&str, &str)]) -> ([u8; 256], usize, usize) {
        let (mut buf, mut n, mut pieces) = ([0u8; 256], 0, 0);
        expand(
            value.as_bytes(),
            |name| {
                vars.iter()
                    .find(|(k, _)| k.as_bytes() == name)
                    .map(|(_, v)| v.as_bytes())
            },
            |piece| {
                assert!(!piece.is_empty(), "an empty piece for {value:?}");
                buf[n..n + piece.len()].copy_from_slice(piece);
                n += piece.len();
                pieces += 1;
            },
        );
        (buf, n, pieces)
    }

    #[test]
    fn names_expand_and_everything_else_stays() {
        let vars = [
            ("A", "a"),
            ("B_1", "b"),
            ("_X", "x"),
            ("TERM", "xterm"),
            ("EMPTY", ""),
        ];
        let table: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("", ""),
            ("$A", "a"),
            ("${A}", "a"),
            ("${A}x", "ax"),
            ("a${TERM}b", "axtermb"),
            // The longest run of name characters is the name.
            ("$Ax", ""),
            ("$A-x", "a-x"),
            ("$B_1/$A", "b/a"),
            ("$_X.", "x."),
            ("${_X}", "x"),
            // Unknown or empty: nothing.
            ("$UNKNOWN-", "-"),
            ("${UNKNOWN}/x", "/x"),
            ("[$EMPTY]", "[]"),
            // Not a name: kept as written.
            ("$", "$"),
            ("a$", "a$"),
            ("$$", "$$"),
            ("a$$A", "a$a"),
            ("$1", "$1"),
            ("cost $5", "cost $5"),
            ("$-", "$-"),
            ("$/x", "$/x"),
            ("${", "${"),
            ("${A", "${A"),
            ("${}", "${}"),
            ("${1A}", "${1A}"),
            ("${A B}", "${A B}"),
            ("${A-x}", "${A-x}"),
            // After a kept `${`, a later name still expands.
            ("${ $A", "${ a"),
            ("é$TERM", "éxterm"),
            ("$TERMé", "xtermé"),
        ];
        for (input, want) in table {
            let (buf, n, _) = run(input, &vars);
            assert_eq!(core::str::from_utf8(&buf[..n]).unwrap(), *want, "{input:?}");
        }
    }

    #[test]
    fn literal_runs_come_whole() {
        // One piece per literal run and per non-empty value, never byte by byte.
        assert_eq!(run("no names here", &[]).2, 1);
        assert_eq!(run("a/$A/b", &[("A", "x")]).2, 3);
        assert_eq!(run("$A$A", &[("A", "x")]).2, 2);
        assert_eq!(run("cost $5 and $$", &[]).2, 1);
    }
}
