//! The crate's modules form layers, and every dependency points down: leaves (addresses and node identity,
//! RESP, metrics with their own label enums), then upstream connections, the topology, routing, the client
//! side, and the application on top. A module that reaches up (or sideways into a module of its own layer)
//! is a sign its responsibility sits in the wrong place; this test fails on the first such import, so the
//! graph stays acyclic. It reads the sources: `crate::name` paths, `use crate::{a, b}` groups and doc links
//! count alike (a doc link up the layers is a reader's dependency too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and its layer, bottom first. A module may use modules of lower layers only.
const LAYERS: &[(&str, u8)] = &[
    // Leaves.
    ("node", 0),
    ("resp", 0),
    ("io", 0),
    ("auth", 2),
    ("metrics", 0),
    ("tls", 1),
    ("command", 1),
    // Connections to Redis nodes, and what one reply frame says.
    ("upstream", 2),
    // Snapshots of shards, discovery, probes.
    ("topology", 3),
    // Pure decisions: where a command goes, what a reply means for it.
    ("route", 4),
    // Client connections.
    ("client", 5),
    // The application: configuration, the servers it starts, admin, reload.
    ("embedded", 6),
    ("config", 6),
    ("admin", 7),
    ("reload", 8),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for `lib.rs` and `main.rs`, the crate root).
fn owner(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The top-level modules a source text names through `crate::`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        // `redsplit::crate::` does not occur; `$crate::` is a macro's, and refers to the crate root.
        if text[..i].ends_with('$') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c}`: every top-level name in the group, at brace depth 0.
            let mut depth = 0usize;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        start = true;
                        continue;
                    }
                    _ => {}
                }
                if start && depth == 0 && (c.is_ascii_alphanumeric() || c == '_') {
                    out.insert(ident(&group[j..]));
                    start = false;
                } else if start && !c.is_whitespace() {
                    start = false;
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_modules_of_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = owner(&src, file) else {
            continue;
        };
        let Some(level) = layer(&module) else {
            wrong.push(format!(
                "{}: module `{module}` has no layer in tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for dep in uses(&text) {
            if dep == module || dep == "self" || dep == "super" {
                continue;
            }
            graph.entry(module.clone()).or_default().insert(dep.clone());
            match layer(&dep) {
                // Items of the crate root (`crate::Proxy`, `crate::StartError`): the application.
                None => wrong.push(format!(
                    "{}: `{module}` uses the crate root's `{dep}`",
                    file.display()
                )),
                Some(l) if l >= level => wrong.push(format!(
                    "{}: `{module}` (layer {level}) uses `{dep}` (layer {l})",
                    file.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
    // Every module of the crate is placed.
    assert!(graph.len() > 5, "too few modules found: {graph:?}");
}

#[test]
fn the_import_scanner_sees_paths_and_groups() {
    let found = uses(
        "use crate::{node::Addr, resp::{self, Limits}, io};\nlet x = crate::metrics::Kind::Read;",
    );
    let want: BTreeSet<String> = ["node", "resp", "io", "metrics"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, want);
}
