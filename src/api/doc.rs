//! The documentation that is generated so that it cannot drift, and its checks (test builds
//! only): `docs/api.md` from the verb table and VDSM's error codes, `docs/layout.md` from the
//! first paragraph of every module's `//!` text under `src/`. A test compares each with the
//! file in `docs/` and fails saying how to regenerate it (`RVDSM_BLESS=1 cargo test --lib
//! api::doc`, which rewrites them); another checks that every relative link and every
//! repository path named in `README.md` and `docs/*.md` exists, and that `docs/testing.md`
//! names every integration test file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::schema::{Param, Verb};
use super::verbs::VERBS;

/// The command that rewrites the generated files, as the failing tests print it.
const BLESS: &str = "RVDSM_BLESS=1 cargo test --lib api::doc";

/// The API reference: every verb of the table with its parameters, then the error codes.
pub fn api_reference(codes_source: &str) -> String {
    let mut out = String::new();
    out.push_str(&generated_header("src/api/verbs.rs and src/api/codes.rs"));
    out.push_str(API_INTRO);
    out.push_str("\n## Verbs\n\n| verb | read-only | what it does |\n|---|---|---|\n");
    for verb in VERBS {
        let _ = writeln!(
            out,
            "| [`{}`](#{}) | {} | {} |",
            verb.name,
            anchor(verb.name),
            if verb.read_only { "yes" } else { "no" },
            cell(first_sentence(verb.description))
        );
    }
    for namespace in namespaces() {
        let _ = write!(out, "\n## {namespace}\n");
        for verb in VERBS.iter().filter(|v| v.namespace() == namespace) {
            out.push_str(&verb_section(verb));
        }
    }
    out.push_str(&codes_section(codes_source));
    out
}

/// The marker at the top of a generated file: where it comes from and how to regenerate it.
fn generated_header(source: &str) -> String {
    format!(
        "<!-- Generated from {source} by `{BLESS}`. Do not edit: change the source and \
         regenerate. -->\n\n"
    )
}

const API_INTRO: &str = "\
# API reference

JSON-RPC 2.0 over STOMP, HTTP (`POST /`) and WebSocket, on the TCP port (54321, mutual TLS)
and on the Unix socket (see [the wire](wire.md)). Parameters go by name as VDSM sends them, or
by position in the order listed here (VDSM's schema order). Unknown parameter names are
logged and ignored; a string where a boolean or a number is expected is taken for the value it
spells (`\"false\"`, `\"1\"`), as VDSM takes it. Errors are `{code, message}` with VDSM's codes
(below) and message forms ([the wire](wire.md#errors)).

Whether a verb is read-only is said by its entry in the verb table (`reads` or `changes`),
never guessed from its name. A verb that changes state runs on a task of its own to its end,
even when its client hangs up (what it did is then logged); a read-only verb may be cut
short, and its successes are logged at debug level, since managers poll them.

The shapes of the larger results (`VmStats`, `Host.getCapabilities`, jobs) and what each verb
does step by step are in [VMs](vms.md), [storage](storage.md), [snapshots](snapshots.md) and
[several hosts](hosts.md).

This file is generated from the verb table (`src/api/verbs.rs`): to add a verb, add one entry
there (its `Call` variant, name constant, wire name, parameter struct, `reads` or `changes`,
description and parameters in VDSM's order) and one arm in `rpc::methods::dispatch`; the
compiler refuses a verb without its arm, `every_verb_schema_names_exactly_its_struct_fields`
refuses a schema that disagrees with the struct, and the CLI's `--list`/`--help`,
`Host.getCapabilities`' `supportedVerbs`, the parameter parsing (by name and by position), the
request fuzzer and this file follow from the entry (regenerate it with `RVDSM_BLESS=1 cargo
test --lib api::doc`).
";

/// The namespaces in the order the table first names them.
fn namespaces() -> Vec<&'static str> {
    let mut seen: Vec<&'static str> = Vec::new();
    for verb in VERBS {
        if !seen.contains(&verb.namespace()) {
            seen.push(verb.namespace());
        }
    }
    seen
}

fn verb_section(verb: &Verb) -> String {
    let mut out = format!("\n### `{}`\n\n", verb.name);
    let _ = writeln!(out, "*{}*. {}\n", kind(verb), text(verb.description));
    if verb.params.is_empty() {
        out.push_str("No parameters.\n");
        return out;
    }
    out.push_str("| parameter | type | required | meaning |\n|---|---|---|---|\n");
    for param in verb.params {
        out.push_str(&param_row(param));
    }
    out
}

fn param_row(param: &Param) -> String {
    format!(
        "| `{}` | {} | {} | {} |\n",
        param.name,
        cell(param.ty.name()),
        if param.required { "yes" } else { "no" },
        cell(param.description)
    )
}

/// How a verb's section starts: what its kind means for a call whose client hangs up.
fn kind(verb: &Verb) -> &'static str {
    if verb.read_only {
        "Read-only"
    } else {
        "Changes state"
    }
}

/// GitHub's anchor of a heading made of the verb's name in backticks.
fn anchor(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The description's first sentence, for the summary table.
fn first_sentence(description: &str) -> &str {
    description
        .find(". ")
        .map_or(description, |end| &description[..=end])
}

/// Text as markdown shows it literally: `<lease>` outside code spans is no HTML tag (inside
/// them markdown shows `&lt;` as written, so they are left alone).
fn text(raw: &str) -> String {
    raw.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                part.to_owned()
            } else {
                part.replace('<', "&lt;").replace('>', "&gt;")
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

/// Text inside a table cell, where `|` would end the cell.
fn cell(raw: &str) -> String {
    text(raw).replace('|', "\\|")
}

/// One error code of `src/api/codes.rs`: its number, constant and meaning.
#[derive(Debug, PartialEq)]
struct Code {
    number: i32,
    name: String,
    meaning: String,
}

/// The codes of `src/api/codes.rs`, read from its text: each `pub const NAME: i32 = N;` with
/// the `///` lines above it. The file names each code once and is the wire contract; reading
/// it keeps this table from being a second list to keep in step.
fn codes(source: &str) -> Vec<Code> {
    let mut found = Vec::new();
    let mut doc: Vec<&str> = Vec::new();
    for line in source.lines().map(str::trim) {
        if let Some(comment) = line.strip_prefix("///") {
            doc.push(comment.trim());
        } else if let Some(rest) = line.strip_prefix("pub const ") {
            let (name, value) = rest
                .split_once(": i32 = ")
                .unwrap_or_else(|| panic!("codes.rs: not a code: {line}"));
            let number = value
                .trim_end_matches(';')
                .parse()
                .unwrap_or_else(|e| panic!("codes.rs: {name}'s number: {e}"));
            found.push(Code {
                number,
                name: name.to_owned(),
                meaning: doc.join(" "),
            });
            doc.clear();
        } else {
            doc.clear();
        }
    }
    found.sort_by_key(|code| code.number);
    found
}

fn codes_section(codes_source: &str) -> String {
    let mut out = String::from(
        "\n## Error codes\n\nVDSM's numbers (`src/api/codes.rs`), which managers branch on; \
         every error rvdsm answers carries one of them.\n\n\
         | code | name | meaning |\n|---|---|---|\n",
    );
    for code in codes(codes_source) {
        let _ = writeln!(
            out,
            "| {} | `{}` | {} |",
            code.number,
            code.name,
            cell(&code.meaning)
        );
    }
    out
}

/// The source layout: every module under `root` (the crate's `src/`) with the first paragraph
/// of its `//!` text, directories before the files beside them, each linked.
pub fn layout(root: &Path) -> std::io::Result<String> {
    let mut out = generated_header("the `//!` text of each module under src/");
    out.push_str(LAYOUT_INTRO);
    out.push_str("\n## `src/`\n\n");
    list_dir(root, root, 0, &mut out)?;
    out.push_str(LAYOUT_OUTSIDE);
    Ok(out)
}

const LAYOUT_INTRO: &str = "\
# Source layout

Data flows one way: `rpc` → `services` → `storage`, `virt`, `jobs` → libvirt, qemu-img,
files. Each layer imports only the layers below it (there is no circle); `api` is the
vocabulary they all share and imports nothing of the crate. `client` sits beside `rpc` and
uses only `api` and the wire codecs. `unsafe` lives only under `sys/`.

Each entry below is the first paragraph of the module's own documentation (its `//!` text),
so this page follows the code.
";

const LAYOUT_OUTSIDE: &str = "
## Outside `src/`

- [`systemd/`](../systemd/): the unit (`rvdsmd.service`) and the documented example
  configuration (`rvdsm.toml`, checked against the defaults by a test).
- [`scripts/`](../scripts/): `setup-host` (packages, libvirtd), `test` (the suite, as CI
  runs it), `demo` (the main job end to end), `soak` (the long soak).
- [`fixtures/`](../fixtures/): the test guest: `build-guest` (kernel, a busybox and qemu-ga
  initramfs, an ext4 data disk; cached in `fixtures/build`), `init.sh` (its PID 1),
  `guest.xml` and `guest-xml` (domain XML), `writeprobe.c` (the guest's fdatasync'd record
  writer and verifier), `sanlock-shim.c` (a test-only shim for sanlock in containers).
- [`tests/`](../tests/): integration tests against a real libvirtd and real guests;
  [`tests/common/`](../tests/common/mod.rs) is the harness. See [testing](testing.md).
- [`bench/`](../bench/): the benchmark suite (`bench/run`) and its reports
  ([`bench/results/`](../bench/results/)). See [benchmarks](benchmarks.md).
- [`fuzz/`](../fuzz/): cargo-fuzz targets and their corpora.
- [`Cargo.toml`](../Cargo.toml): `[workspace.lints]`, the lint bar every target is built to.
- [`rust-toolchain.toml`](../rust-toolchain.toml): the pinned stable release, with rustfmt
  and clippy.
- [`deny.toml`](../deny.toml): cargo-deny's licences, bans and sources, checked by
  `scripts/test`.
- [`.cargo/config.toml`](../.cargo/config.toml): a build define for mimalloc (lazily
  committed arenas).
- [`.ci/run`](../.ci/run): CI, which runs `scripts/test`.
";

/// Lists `dir`'s modules: a directory's entry is its `mod.rs`, then what it holds.
fn list_dir(root: &Path, dir: &Path, depth: usize, out: &mut String) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    // Directories first, then files, each by name: a module's folder reads as one block.
    entries.sort_by_key(|path| (!path.is_dir(), path.file_name().map(ToOwned::to_owned)));
    let indent = "  ".repeat(depth);
    for path in entries {
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if path.is_dir() {
            let module = path.join("mod.rs");
            if module.exists() {
                let summary = module_summary(&module)?;
                let _ = writeln!(
                    out,
                    "{indent}- [`{relative}/`](../src/{relative}/mod.rs): {summary}"
                );
            } else {
                // A folder that is no module (`bin/`: one crate per file).
                let _ = writeln!(out, "{indent}- [`{relative}/`](../src/{relative}/)");
            }
            list_dir(root, &path, depth + 1, out)?;
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "mod.rs")
        {
            let summary = module_summary(&path)?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let _ = writeln!(out, "{indent}- [`{name}`](../src/{relative}): {summary}");
        }
    }
    Ok(())
}

/// The first paragraph of a file's leading `//!` lines, on one line, rustdoc's links made
/// plain text (they mean nothing outside rustdoc).
fn module_summary(path: &Path) -> std::io::Result<String> {
    let source = std::fs::read_to_string(path)?;
    let paragraph: Vec<&str> = source
        .lines()
        .map_while(|line| line.strip_prefix("//!"))
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    if paragraph.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} has no //! text: say what the module owns",
            path.display()
        )));
    }
    Ok(text(&plain_links(&paragraph.join(" "))))
}

/// `[`x`]` and `[x](y)` as rustdoc writes them, as plain `` `x` `` and `x`.
fn plain_links(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else {
            out.push_str(&rest[open..]);
            return out;
        };
        out.push_str(&after[..close]);
        rest = &after[close + 1..];
        // An inline target `(…)` right after the brackets goes with them.
        if rest.starts_with('(')
            && let Some(end) = rest.find(')')
        {
            rest = &rest[end + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// Compares `rendered` with the file at `relative`, or writes it when `RVDSM_BLESS` is set.
    fn check_generated(relative: &str, rendered: &str, source: &str) {
        let path = repository().join(relative);
        if std::env::var_os("RVDSM_BLESS").is_some() {
            std::fs::write(&path, rendered).unwrap_or_else(|e| panic!("{relative}: {e}"));
            return;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk == rendered {
            return;
        }
        let first_difference = on_disk
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| on_disk.lines().count().min(rendered.lines().count()));
        panic!(
            "{relative} is not what {source} says (first difference at line {}: the file has \
             {:?}, the source gives {:?}). Regenerate it with `{BLESS}` and commit it.",
            first_difference + 1,
            on_disk.lines().nth(first_difference).unwrap_or("<end>"),
            rendered.lines().nth(first_difference).unwrap_or("<end>"),
        );
    }

    #[test]
    fn api_md_is_the_verb_table() {
        let rendered = api_reference(include_str!("codes.rs"));
        check_generated(
            "docs/api.md",
            &rendered,
            "the verb table (src/api/verbs.rs)",
        );
    }

    #[test]
    fn layout_md_is_the_modules_own_text() {
        let rendered = layout(&repository().join("src")).unwrap();
        check_generated(
            "docs/layout.md",
            &rendered,
            "the modules' //! text under src/",
        );
    }

    #[test]
    fn every_verb_and_code_is_in_the_reference() {
        let rendered = api_reference(include_str!("codes.rs"));
        for verb in VERBS {
            assert!(
                rendered.contains(&format!("### `{}`", verb.name)),
                "{}",
                verb.name
            );
            for param in verb.params {
                assert!(
                    rendered.contains(&format!("| `{}` |", param.name)),
                    "{}",
                    param.name
                );
            }
        }
        let codes = codes(include_str!("codes.rs"));
        assert!(
            codes.len() > 40,
            "only {} codes read from codes.rs",
            codes.len()
        );
        let no_such_vm = codes.iter().find(|c| c.name == "NO_SUCH_VM").unwrap();
        assert_eq!(no_such_vm.number, super::super::codes::NO_SUCH_VM);
        assert_eq!(no_such_vm.meaning, "Virtual machine does not exist.");
    }

    #[test]
    fn codes_are_read_with_their_doc_lines() {
        let source = "// Group.\n/// Two\n/// lines.\npub const A: i32 = 7;\n\n\
                      pub const B: i32 = -3;\n#[cfg(test)]\nconst ALL: &[i32] = &[A];\n";
        assert_eq!(
            codes(source),
            vec![
                Code {
                    number: -3,
                    name: "B".into(),
                    meaning: String::new()
                },
                Code {
                    number: 7,
                    name: "A".into(),
                    meaning: "Two lines.".into()
                },
            ]
        );
    }

    #[test]
    fn rustdoc_links_become_plain_text() {
        assert_eq!(
            plain_links("the [`Call`] of [`super::verbs`] and [the file](crate::x) [x"),
            "the `Call` of `super::verbs` and the file [x"
        );
    }

    #[test]
    fn angle_brackets_are_escaped_outside_code_only() {
        assert_eq!(text("a <lease> in `<x>`"), "a &lt;lease&gt; in `<x>`");
    }

    #[test]
    fn anchors_are_githubs() {
        assert_eq!(anchor("Host.getVMList"), "hostgetvmlist");
        assert_eq!(anchor("SDM.copy_data"), "sdmcopy_data");
    }

    /// The documents a reader follows links in: the README and everything in docs/.
    fn documents() -> Vec<PathBuf> {
        let mut found = vec![repository().join("README.md")];
        let docs = repository().join("docs");
        for entry in std::fs::read_dir(&docs).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
        found.sort();
        found
    }

    /// Relative targets of `[text](target)` links, anchors and web addresses left out.
    fn relative_links(markdown: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = markdown;
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = rest[..end].split('#').next().unwrap_or_default();
            let external = target.contains("://") || target.starts_with("mailto:");
            if !target.is_empty() && !external {
                found.push(target.to_owned());
            }
            rest = &rest[end..];
        }
        found
    }

    /// Repository paths named in inline code (`` `src/...` ``), outside fenced blocks:
    /// the prose's claims about where things are.
    fn named_paths(markdown: &str) -> Vec<String> {
        const ROOTS: &[&str] = &[
            "src/",
            "tests/",
            "scripts/",
            "fixtures/",
            "bench/",
            "systemd/",
            "fuzz/",
            "docs/",
            ".ci/",
            ".cargo/",
        ];
        let mut found = Vec::new();
        let mut fenced = false;
        for line in markdown.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if fenced {
                continue;
            }
            for (i, span) in line.split('`').enumerate() {
                let is_code = i % 2 == 1;
                let is_path = ROOTS.iter().any(|root| span.starts_with(root))
                    && !span.contains(char::is_whitespace)
                    && !span.contains(['<', '*', '{']);
                if is_code && is_path {
                    found.push(span.trim_end_matches(['.', ',', ':']).to_owned());
                }
            }
        }
        found
    }

    #[test]
    fn every_link_and_path_in_the_docs_exists() {
        let mut missing = Vec::new();
        for document in documents() {
            let markdown = std::fs::read_to_string(&document).unwrap();
            let dir = document.parent().unwrap();
            let name = document.strip_prefix(repository()).unwrap().display();
            for target in relative_links(&markdown) {
                if !dir.join(&target).exists() {
                    missing.push(format!("{name}: link to {target}"));
                }
            }
            for path in named_paths(&markdown) {
                // `fixtures/build` is the fixture's cache, made by `fixtures/build-guest`.
                if path != "fixtures/build" && !repository().join(&path).exists() {
                    missing.push(format!("{name}: names {path}"));
                }
            }
        }
        assert!(missing.is_empty(), "nothing there: {missing:#?}");
    }

    #[test]
    fn link_and_path_finders_find_what_they_should() {
        let markdown = "see [a](docs/a.md#x), [b](https://x.org), [c](#here), `src/lib.rs`,\n\
                        `src/x y`, `cargo test`\n```\n`src/in_a_block.rs`\n```\n";
        assert_eq!(relative_links(markdown), vec!["docs/a.md"]);
        assert_eq!(named_paths(markdown), vec!["src/lib.rs"]);
    }

    #[test]
    fn testing_md_names_every_integration_test() {
        let testing = std::fs::read_to_string(repository().join("docs/testing.md")).unwrap();
        let mut unnamed = Vec::new();
        for entry in std::fs::read_dir(repository().join("tests")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.extension().is_some_and(|e| e == "rs") && !testing.contains(&name) {
                unnamed.push(name);
            }
        }
        unnamed.sort();
        assert!(
            unnamed.is_empty(),
            "docs/testing.md does not say what these test files cover: {unnamed:?}"
        );
    }
}
