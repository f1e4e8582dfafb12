//! The house's rule, checked on the source: data flows one way (transports → services →
//! storage, virt, jobs, cluster → sys), each module imports only modules of a lower layer, so
//! no import runs back up and there is no circle. A module's unit tests (`#[cfg(test)] mod
//! tests { .. }` at the end of a file) may reach further (the rpc tests open a real, unreachable
//! libvirt connection); doc comments are not imports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may import modules of lower layers only; the crate
/// root's items (`VERSION`, `error_chain`) are below everything.
const LAYERS: &[&[&str]] = &[
    &["api", "clock", "fsutil", "failpoint"],
    &["sys", "config"],
    &["storage", "virt", "events", "metrics", "hostinfo"],
    &["cluster", "jobs"],
    &["services"],
    &["rpc"],
    &["client", "pki", "cli", "fuzzing"],
];

/// Items of the crate root every module may use.
const ROOT_ITEMS: &[&str] = &["VERSION", "error_chain"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without its trailing unit-test module and without comments.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate's top-level modules a piece of code names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(at, _)| {
            code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn no_import_runs_back_up_and_there_is_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut unknown = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs");
        if matches!(module, "bin" | "lib" | "main") {
            continue;
        }
        let Some(own) = layer_of(module) else {
            unknown.insert(module.to_owned());
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for used in imports(&code) {
            if used == module || ROOT_ITEMS.contains(&used.as_str()) {
                continue;
            }
            match layer_of(&used) {
                Some(layer) if layer < own => {}
                Some(_) => wrong.push(format!("{} imports crate::{used}", relative.display())),
                None => drop(unknown.insert(used)),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS in tests/layers.rs: {unknown:?}"
    );
    assert!(
        wrong.is_empty(),
        "imports that run up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    let code =
        code_of("use crate::services::Foo; // crate::rpc in a comment\nfn f() { crate::api::x() }");
    assert_eq!(
        imports(&code),
        BTreeSet::from(["services".to_owned(), "api".to_owned()])
    );
    let with_tests = "use crate::api::A;\n#[cfg(test)]\nmod tests {\n use crate::rpc::B;\n}\n";
    assert_eq!(
        imports(&code_of(with_tests)),
        BTreeSet::from(["api".to_owned()])
    );
}
