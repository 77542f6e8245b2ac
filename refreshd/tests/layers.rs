//! The daemon's layers (docs/architecture.md, "Layers"): each top-level module of refreshd may
//! use modules of lower layers only. So decisions stay in one place (the operations layer,
//! which the API and auto-refresh both call), nothing below the API knows HTTP, and the
//! modules have no cycles. This test reads the sources and fails, naming file and line, on a
//! reference to a module of the same or a higher layer, and on a module placed in no layer.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

mod lint;
use lint::sources;

/// Lowest first. A module may use those of the layers before its own.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "the ground: files, the database, /proc, child processes",
        &[
            "blob",
            "db",
            "fsutil",
            "kinds",
            "layout",
            "procfs",
            "shutdown_delay",
            "supervise",
        ],
    ),
    ("users' trees", &["usertree"]),
    ("the change/task engine", &["engine"]),
    ("knowing which apps run (cgroups, markers)", &["tracking"]),
    (
        "around the engine: metrics, notices, systemd",
        &["metrics", "notify", "systemd"],
    ),
    ("what each task does", &["tasks"]),
    ("the decisions: what a request or a timer makes", &["ops"]),
    ("automatic refreshes", &["autorefresh"]),
    ("the HTTP API: parse, authorize, answer", &["api"]),
    ("the daemon: wiring and start-up", &["daemon"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// The text of a source file without comments and string literals (which may name modules
/// freely), line structure kept.
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' || (b[i] == b'r' && matches!(b.get(i + 1), Some(b'"' | b'#'))) {
            // A string, raw or not: skipped to its end.
            let raw = b[i] == b'r';
            let mut hashes = 0;
            if raw {
                i += 1;
                while b.get(i) == Some(&b'#') {
                    hashes += 1;
                    i += 1;
                }
            }
            i += 1;
            loop {
                match b.get(i) {
                    None => break,
                    Some(b'\\') if !raw => i += 2,
                    Some(b'"') if b[i + 1..].iter().take(hashes).all(|&c| c == b'#') => {
                        i += 1 + hashes;
                        break;
                    }
                    Some(&c) => {
                        if c == b'\n' {
                            out.push('\n');
                        }
                        i += 1;
                    }
                }
            }
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal such as '"' (lifetimes have no closing quote).
            out.push_str("' '");
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `code` names through `crate::`, with their line numbers: `crate::x`,
/// and each item of a group `crate::{x, y::z}`.
fn references(code: &str) -> Vec<(usize, String)> {
    let mut out = vec![];
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            // `refreshd_crate::` or `$crate::` are other things.
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                // One level of items; a group may span lines, so the rest of the file is read.
                let start = code.lines().take(n).map(|l| l.len() + 1).sum::<usize>()
                    + (line.len() - group.len());
                // The first identifier of each item at depth 0.
                let mut depth = 0;
                let mut item = String::new();
                let mut items = vec![];
                for c in code[start..].chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                        _ => item.push(c),
                    }
                }
                items.push(item);
                for it in items {
                    let name = ident_at(it.trim_start());
                    if !name.is_empty() && name != "self" {
                        out.push((n + 1, name.to_owned()));
                    }
                }
            } else {
                let name = ident_at(rest);
                if !name.is_empty() {
                    out.push((n + 1, name.to_owned()));
                }
            }
        }
    }
    out
}

/// The top-level module a source file belongs to (`api` for src/api/watch.rs); None for the
/// crate roots (lib.rs, the binaries), which only declare and call.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    if first == "lib.rs" || first == "bin" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_owned())
}

/// Every breach of the layers in `src`: `file:line: what`.
fn breaches(src: &Path) -> Vec<String> {
    let mut bad = vec![];
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in code(&lib).lines() {
        let l = line.trim();
        let decl = l
            .strip_prefix("pub mod ")
            .or_else(|| l.strip_prefix("pub(crate) mod "))
            .or_else(|| l.strip_prefix("mod "));
        if let Some(m) = decl.map(|d| d.trim_end_matches(';')) {
            if layer_of(m).is_none() {
                bad.push(format!(
                    "src/lib.rs: module {m} is in no layer; add it to LAYERS in refreshd/tests/layers.rs and to docs/architecture.md"
                ));
            }
        }
    }
    for f in sources(src) {
        let Some(module) = module_of(src, &f) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            continue;
        };
        let text = fs::read_to_string(&f).unwrap();
        for (n, used) in references(&code(&text)) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(l) if l < own => {}
                Some(l) => bad.push(format!(
                    "{}:{n}: {module} ({}) uses {used} ({}), a layer {} it",
                    f.strip_prefix(src.parent().unwrap()).unwrap().display(),
                    LAYERS[own].0,
                    LAYERS[l].0,
                    if l == own { "beside" } else { "above" }
                )),
                // An item of lib.rs itself (none today) or a macro's path.
                None => {}
            }
        }
    }
    bad
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = breaches(&src);
    assert!(
        bad.is_empty(),
        "modules that reach up or sideways (move the code to the lower module, or pass what \
         it needs down):\n{}",
        bad.join("\n")
    );
}

/// The check itself: a back-import is found wherever it is written, and nothing in comments
/// or strings counts.
#[test]
fn the_check_finds_a_back_import() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("engine")).unwrap();
    fs::write(src.join("lib.rs"), "pub mod engine;\npub mod api;\n").unwrap();
    fs::write(src.join("api.rs"), "use crate::engine::Engine;\n").unwrap();
    fs::write(
        src.join("engine/mod.rs"),
        "// crate::api is named in a comment\nconst S: &str = \"crate::api\";\n",
    )
    .unwrap();
    assert!(breaches(&src).is_empty(), "{:?}", breaches(&src));
    for back in [
        "use crate::api::ApiState;\n",
        "use crate::{\n    layout::Layout,\n    api::{self, ApiError},\n};\n",
        "fn f() { crate::api::serve(); }\n",
    ] {
        fs::write(src.join("engine/run.rs"), back).unwrap();
        let found = breaches(&src);
        assert_eq!(found.len(), 1, "{back:?}: {found:?}");
        assert!(
            found[0].contains("engine") && found[0].contains("uses api"),
            "{found:?}"
        );
    }
    fs::write(
        src.join("lib.rs"),
        "pub mod engine;\npub mod api;\nmod extra;\n",
    )
    .unwrap();
    fs::remove_file(src.join("engine/run.rs")).unwrap();
    let found = breaches(&src);
    assert!(
        found.len() == 1 && found[0].contains("extra is in no layer"),
        "{found:?}"
    );
}

#[test]
fn layers_name_each_module_once() {
    let mut seen = BTreeMap::new();
    for (i, (_, ms)) in LAYERS.iter().enumerate() {
        for m in *ms {
            assert!(seen.insert(*m, i).is_none(), "{m} is in two layers");
        }
    }
}
