//! No two files of `mirrorkv-coordinator` or `mirrorkv-api` import each other, directly or
//! round a longer circle: each file's imports (`crate::…`, and the crate root's `module::…`)
//! form a graph without cycles. The crate root may import the files that hold the types it
//! keeps; a file that imports the root (`crate::Coordinator`) is then never imported by it.
//! Test code (after `#[cfg(test)]`) is not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The root's name in the graph.
const ROOT: &str = "lib";

/// Each file's module name (`lib` for the root) and the files it imports.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("read src") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&path).expect("read file");
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            sources.insert(name, code);
        }
    }
    let modules: BTreeSet<String> = sources.keys().filter(|n| *n != ROOT).cloned().collect();
    let mut graph = BTreeMap::new();
    for (name, code) in &sources {
        let mut imports = BTreeSet::new();
        for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or("").trim())
                        .collect(),
                    None => vec![rest
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or("")],
                };
                for imported in names.into_iter().filter(|n| !n.is_empty()) {
                    imports.insert(if modules.contains(imported) {
                        imported.to_string()
                    } else {
                        ROOT.to_string()
                    });
                }
            }
            if name == ROOT {
                // The root names its modules without `crate::` (`use batch::…`, `kv::get`).
                for module in &modules {
                    let used = line.match_indices(&format!("{module}::")).any(|(at, _)| {
                        at == 0
                            || !line[..at]
                                .ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
                    });
                    if used {
                        imports.insert(module.clone());
                    }
                }
            }
        }
        imports.remove(name);
        graph.insert(name.clone(), imports);
    }
    graph
}

/// A cycle in `graph`, as the files round it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn assert_no_cycle(crate_dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(crate_dir)
        .join("src");
    let graph = import_graph(&src);
    assert!(
        graph.len() > 5,
        "read only {} files in {}",
        graph.len(),
        src.display()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "files import each other in {crate_dir}: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn coordinator_files_import_each_other_in_no_circle() {
    assert_no_cycle(".");
}

#[test]
fn api_files_import_each_other_in_no_circle() {
    assert_no_cycle("../api");
}

#[test]
fn a_circle_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("lib", vec!["write"]),
        ("write", vec!["batch"]),
        ("batch", vec!["lib"]),
        ("gate", vec![]),
    ]
    .into_iter()
    .map(|(n, e)| (n.to_string(), e.into_iter().map(String::from).collect()))
    .collect();
    let cycle = find_cycle(&graph).expect("a cycle");
    let files: BTreeSet<&str> = cycle.iter().map(String::as_str).collect();
    assert_eq!(
        files,
        BTreeSet::from(["lib", "write", "batch"]),
        "{cycle:?}"
    );
    assert_eq!(cycle.first(), cycle.last(), "{cycle:?}");
}
