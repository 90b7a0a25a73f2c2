//! Architecture invariants: the layering of the workspace, checked on every test run.
//!
//! 1. The crate dependency rule ([`RULES`]). Products never depend on the test harness or the
//!    test suites, so nothing test-only can end up in a shipped binary; provider crates (Azure,
//!    Gardener, telemetry) depend only on the core, never on each other, so a provider can change
//!    or go without touching the others; the core depends on no workspace crate and is
//!    network-free (no HTTP client or server, cloud SDK, SQLite or TLS stack in its dependency
//!    graph, [`NETWORK_CRATES`]), so the domain logic stays testable in memory and small.
//! 2. No import circle between the source files of a crate. A file-level circle means two files
//!    cannot be understood, moved or split apart on their own; breaking them keeps the "library
//!    first" layout (types at the bottom, behaviour above them) possible.
//! 3. One date/time crate in the products' own code ([`TIME_CRATES`]): `jiff`, behind
//!    `pxb_core::clock`.
//! 4. Only `pxb-telemetry` sets up logging or writes Prometheus exposition lines
//!    ([`TELEMETRY_ONLY`]) in the products' sources.
//!
//! The crate rule comes from `cargo metadata`; the file rule from a small scanner of the sources
//! (comments, string literals and `#[cfg(test)]` items are ignored: tests may use anything).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

// ------------------------------------------------------------------------------------------------
// The rule table.
// ------------------------------------------------------------------------------------------------

/// Which workspace crates a workspace crate may depend on. `None`: any.
struct Rule {
    name: &'static str,
    /// A product: shipped, or linked into something shipped.
    product: bool,
    /// Normal and build dependencies (optional ones included).
    normal: Option<&'static [&'static str]>,
    /// Dev-dependencies.
    dev: Option<&'static [&'static str]>,
}

const CORE: &str = "pxb-core";
const HARNESS: &str = "pxb-harness";
const TESTS: &str = "pxb-tests";

/// Provider crates: each depends on the core only, never on another provider.
const PROVIDERS: &[&str] = &["pxb-azure", "pxb-gardener", "pxb-telemetry"];

/// Every workspace member must be named here (a new crate must be added to the table); a name
/// here that is not a member yet is skipped.
const RULES: &[Rule] = &[
    Rule {
        name: "pxb-core",
        product: true,
        normal: Some(&[]),
        // Itself, with its conformance and fuzz features on, for its own integration tests.
        dev: Some(&["pxb-core", "pxb-harness"]),
    },
    Rule {
        name: "pxb-azure",
        product: true,
        normal: Some(&["pxb-core"]),
        dev: Some(&["pxb-core", "pxb-harness"]),
    },
    Rule {
        name: "pxb-gardener",
        product: true,
        normal: Some(&["pxb-core"]),
        dev: Some(&["pxb-core", "pxb-harness"]),
    },
    // Logs and metrics for every binary: below even the core's users, it depends on no pxb
    // crate (the daemon passes it the core's redaction as a function). Being a provider, no other
    // provider may depend on it; the daemon and the test suites do.
    Rule {
        name: "pxb-telemetry",
        product: true,
        normal: Some(&[]),
        // The harness for `promtool`; itself with the `conformance` feature (the support
        // channel's twin and conformance suite), as the core does.
        dev: Some(&["pxb-telemetry", "pxb-harness"]),
    },
    // The fleet simulator (tests/sim): a Gardener garden and Kubernetes APIs, used by the daemon.
    Rule {
        name: "pxb-sim",
        product: true,
        normal: Some(&["pxb-core"]),
        dev: Some(&["pxb-core", "pxb-harness"]),
    },
    // The test harness (tests/harness): Azurite, the Entra stand-in, issuers, TLS. No product.
    Rule {
        name: "pxb-harness",
        product: false,
        normal: Some(&[]),
        dev: Some(&[]),
    },
    Rule {
        name: "pxb-daemon",
        product: true,
        normal: Some(&[
            "pxb-core",
            "pxb-azure",
            "pxb-gardener",
            "pxb-telemetry",
            "pxb-sim",
        ]),
        // The harness and the simulator, and the core again with its conformance suites on.
        dev: Some(&["pxb-core", "pxb-harness", "pxb-sim"]),
    },
    // The Python bindings (bindings/python): the same crates as the SDK, and the simulator for
    // `pxb.testing`. Tested from Python against the built wheel (no Rust dev-dependencies).
    Rule {
        name: "pxb-python",
        product: true,
        normal: Some(&["pxb-core", "pxb-daemon", "pxb-gardener", "pxb-sim"]),
        dev: Some(&[]),
    },
    // Scenarios and benchmarks: anything.
    Rule {
        name: "pxb-tests",
        product: false,
        normal: None,
        dev: None,
    },
];

/// Crates that must not be in the core's resolved normal dependency graph: HTTP, cloud SDKs,
/// SQLite, a Kubernetes client, TLS. (`kube-core` and `kube-derive` are types only: allowed.)
const NETWORK_CRATES: &[&str] = &[
    "reqwest",
    "hyper",
    "hyper-util",
    "axum",
    "azure_core",
    "azure_identity",
    "azure_storage_blob",
    "rusqlite",
    "kube-client",
    "tokio-rustls",
];

// ------------------------------------------------------------------------------------------------
// Crate dependencies.
// ------------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

fn cargo_metadata() -> Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// The workspace members' packages.
fn members(meta: &Value) -> Vec<&Value> {
    let ids: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| ids.contains(str_of(p, "id")))
        .collect()
}

fn dependency_violations(meta: &Value) -> Vec<String> {
    let members = members(meta);
    let names: BTreeSet<&str> = members.iter().map(|p| str_of(p, "name")).collect();
    let rules: HashMap<&str, &Rule> = RULES.iter().map(|r| (r.name, r)).collect();
    let products: BTreeSet<&str> = RULES.iter().filter(|r| r.product).map(|r| r.name).collect();
    let mut bad = Vec::new();
    for name in &names {
        if !rules.contains_key(name) {
            bad.push(format!(
                "{name}: a workspace member the rule table does not name (add it to RULES in {})",
                file!()
            ));
        }
    }
    for package in &members {
        let name = str_of(package, "name");
        let Some(rule) = rules.get(name) else { continue };
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let target = str_of(dep, "name");
            if dep["path"].is_null() || !names.contains(target) {
                continue;
            }
            let optional = if dep["optional"].as_bool() == Some(true) {
                "optional "
            } else {
                ""
            };
            let (kind, allowed) = match dep["kind"].as_str() {
                None => ("normal", rule.normal),
                Some("build") => ("build", rule.normal),
                Some("dev") => ("dev", rule.dev),
                Some(other) => (other, rule.normal),
            };
            let kind = format!("{optional}{kind}");
            if let Some(allowed) = allowed
                && !allowed.contains(&target)
            {
                bad.push(format!(
                    "{name} has a {kind} dependency on {target}, but the rule allows it only {}",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ));
            }
            // The invariants below also hold whatever the table says.
            if kind != "dev" && products.contains(name) && [HARNESS, TESTS].contains(&target) {
                bad.push(format!(
                    "{name} has a {kind} dependency on {target}: a product never depends on the test \
                     harness or the test suites"
                ));
            }
            if PROVIDERS.contains(&name) && PROVIDERS.contains(&target) && name != target {
                bad.push(format!(
                    "{name} has a {kind} dependency on {target}: providers never depend on each other"
                ));
            }
            if name == CORE && kind != "dev" {
                bad.push(format!(
                    "{name} has a {kind} dependency on {target}: the core depends on no workspace crate"
                ));
            }
        }
    }
    bad.extend(core_network_dependencies(meta));
    bad
}

/// The [`NETWORK_CRATES`] in the core's resolved normal dependency graph, each with the chain of
/// dependencies that brings it in.
fn core_network_dependencies(meta: &Value) -> Vec<String> {
    let packages: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (str_of(p, "id"), str_of(p, "name")))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| (str_of(n, "id"), n))
        .collect();
    let Some(core) = members(meta).into_iter().find(|p| str_of(p, "name") == CORE) else {
        return vec![format!("{CORE} is not a workspace member")];
    };
    // Breadth first, remembering who brought each package in.
    let start = str_of(core, "id");
    let mut parent: HashMap<&str, &str> = HashMap::from([(start, "")]);
    let mut queue = VecDeque::from([start]);
    let mut bad = Vec::new();
    while let Some(id) = queue.pop_front() {
        let name = packages.get(id).copied().unwrap_or(id);
        if NETWORK_CRATES.contains(&name) {
            let mut chain = vec![name];
            let mut at = parent[id];
            while !at.is_empty() {
                chain.push(packages.get(at).copied().unwrap_or(at));
                at = parent[at];
            }
            chain.reverse();
            bad.push(format!(
                "{CORE} depends on {name} ({}): the core is network-free (no {})",
                chain.join(" -> "),
                NETWORK_CRATES.join(", ")
            ));
        }
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            let pkg = str_of(dep, "pkg");
            if normal && !parent.contains_key(pkg) {
                parent.insert(pkg, id);
                queue.push_back(pkg);
            }
        }
    }
    bad
}

#[test]
fn crate_dependencies_follow_the_rule() {
    let bad = dependency_violations(&cargo_metadata());
    assert!(
        bad.is_empty(),
        "the crate dependency rule is broken:\n  {}",
        bad.join("\n  ")
    );
}

/// Date/time crates. pxb's own code uses one, `jiff` (calendars, IANA zones), behind
/// `pxb_core::clock` for timestamps; `time` appears only where a dependency's API hands it over
/// (azure_core's token expiry, rcgen's certificate validity in the simulator and harness).
const TIME_CRATES: &[&str] = &["time", "chrono"];

/// Product crates (besides the simulator, whose certificates go through rcgen) that name a
/// date/time crate other than `jiff` as a direct dependency.
fn other_time_crates(meta: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    for p in members(meta) {
        let name = str_of(p, "name");
        let product = RULES.iter().any(|r| r.name == name && r.product) && name != "pxb-sim";
        if !product {
            continue;
        }
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = str_of(d, "name");
            if TIME_CRATES.contains(&dep) && d["kind"].is_null() {
                bad.push(format!(
                    "{name} depends on {dep}; use jiff through pxb_core::clock"
                ));
            }
        }
    }
    bad
}

#[test]
fn products_use_one_date_time_crate() {
    let meta = cargo_metadata();
    let bad = other_time_crates(&meta);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // The rule sees what it checks: the core does depend on jiff.
    let core = members(&meta)
        .into_iter()
        .find(|p| str_of(p, "name") == CORE)
        .expect("pxb-core");
    assert!(
        core["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| str_of(d, "name") == "jiff")
    );
}

// ------------------------------------------------------------------------------------------------
// Import circles between files.
// ------------------------------------------------------------------------------------------------

/// A token of Rust source: an identifier (keywords and `$crate` included), `::`, or one other
/// character; `pos` is its byte offset.
#[derive(Debug)]
struct Tok {
    text: String,
    pos: usize,
}

/// `src` with comments and string and character literals blanked out (byte offsets and newlines
/// are kept, so a position still names its line).
fn blank_comments_and_literals(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if (b[i] == b'r' || rest.starts_with(b"br"))
            && (i == 0 || !ident(b[i - 1]))
            && let Some(hashes) = {
                let r = if b[i] == b'r' { i + 1 } else { i + 2 };
                let n = b[r..].iter().take_while(|&&c| c == b'#').count();
                (b.get(r + n) == Some(&b'"')).then_some((r + n, n))
            }
        {
            // A raw string: r"…", r#"…"#, br"…".
            let (quote, n) = hashes;
            let mut close = b"\"".to_vec();
            close.extend(std::iter::repeat_n(b'#', n));
            let end = b[quote + 1..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |p| quote + 1 + p + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A character literal ('x', '\n', 'é'), or else a lifetime or label ('a), kept.
            let end = if b.get(i + 1) == Some(&b'\\') {
                // Past the escaped character: '\'' and '\\' end at the next quote.
                b.get(i + 3..)
                    .and_then(|r| r.iter().position(|&c| c == b'\''))
                    .map(|p| i + 3 + p + 1)
            } else {
                let len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 2 + len)
            };
            match end {
                Some(end) => {
                    blank(&mut out, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else if ident(b[i]) {
            // Skip whole words, so that the `r` ending `bar"` is not read as a raw string.
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only whole characters are blanked")
}

fn tokenize(clean: &str) -> Vec<Tok> {
    let b = clean.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || !c.is_ascii();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if word(c) || (c == b'$' && b.get(i + 1).is_some_and(|&n| word(n))) {
            let start = i;
            i += 1;
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            toks.push(Tok {
                text: clean[start..i].to_string(),
                pos: start,
            });
        } else if b[i..].starts_with(b"::") {
            toks.push(Tok {
                text: "::".into(),
                pos: i,
            });
            i += 2;
        } else {
            toks.push(Tok {
                text: (c as char).to_string(),
                pos: i,
            });
            i += 1;
        }
    }
    toks
}

fn is_ident(t: &str) -> bool {
    t.starts_with(|c: char| c.is_alphabetic() || c == '_' || c == '$')
}

/// The index just past the bracket that closes the one at `open`.
fn matching(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0i32;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

fn is_seq(toks: &[Tok], at: usize, seq: &[&str]) -> bool {
    seq.iter()
        .enumerate()
        .all(|(k, s)| toks.get(at + k).is_some_and(|t| t.text == *s))
}

/// `toks` without the items under `#[cfg(test)]` (a `mod tests { … }` block, a `mod tests;`
/// declaration, a test-only `use` or function), and nothing at all for a `#![cfg(test)]` file.
fn drop_test_items(toks: Vec<Tok>) -> Vec<Tok> {
    if (0..toks.len()).any(|i| is_seq(&toks, i, &["#", "!", "[", "cfg", "(", "test", ")", "]"])) {
        return Vec::new();
    }
    let mut keep = vec![true; toks.len()];
    let mut i = 0;
    while i < toks.len() {
        if !is_seq(&toks, i, &["#", "[", "cfg", "(", "test", ")", "]"]) {
            i += 1;
            continue;
        }
        let start = i;
        i += 7;
        // Further attributes of the same item.
        while is_seq(&toks, i, &["#", "["]) {
            i = matching(&toks, i + 1);
        }
        // The item: up to its `;`, or through its `{ … }` body.
        while i < toks.len() {
            match toks[i].text.as_str() {
                ";" => {
                    i += 1;
                    break;
                }
                "{" => {
                    i = matching(&toks, i);
                    break;
                }
                "(" | "[" => i = matching(&toks, i),
                _ => i += 1,
            }
        }
        keep[start..i].iter_mut().for_each(|k| *k = false);
    }
    toks.into_iter()
        .zip(keep)
        .filter_map(|(t, k)| k.then_some(t))
        .collect()
}

/// How a `use` path binds a name.
#[derive(Clone, Debug, PartialEq)]
enum Binding {
    /// `a::b` binds `b`, `a::b as c` binds `c`, `a::{self}` binds `a`; `as _` binds nothing.
    Name(Option<String>),
    /// `a::*`.
    Glob,
}

#[derive(Clone, Debug)]
struct UsePath {
    segs: Vec<String>,
    binding: Binding,
    /// A re-export (`pub use`, `pub(crate) use`): it publishes an item for the module's users
    /// and is followed when resolving their paths, but the re-exporting file's own code does not
    /// depend on the item, so it makes no edge of its own (a `mod.rs` that declares its children
    /// and re-exports their items is a facade, not a circle).
    public: bool,
}

/// Flattens the use tree starting at `toks[*at]` (after `use`) into paths.
fn use_tree(toks: &[Tok], at: &mut usize, mut segs: Vec<String>, out: &mut Vec<UsePath>) {
    let text = |i: usize| toks.get(i).map_or("", |t| t.text.as_str());
    if text(*at) == "::" {
        // `use ::name`: an external crate.
        segs.push("::".into());
        *at += 1;
    }
    loop {
        match text(*at) {
            "{" => {
                *at += 1;
                while *at < toks.len() && text(*at) != "}" {
                    use_tree(toks, at, segs.clone(), out);
                    if text(*at) == "," {
                        *at += 1;
                    }
                }
                *at += 1;
                return;
            }
            "*" => {
                *at += 1;
                out.push(UsePath {
                    segs,
                    binding: Binding::Glob,
                    public: false,
                });
                return;
            }
            t if is_ident(t) => {
                segs.push(t.to_string());
                *at += 1;
                if text(*at) == "::" {
                    *at += 1;
                    continue;
                }
                if segs.last().is_some_and(|s| s == "self") {
                    segs.pop();
                }
                let binding = if text(*at) == "as" {
                    *at += 2;
                    Some(text(*at - 1)).filter(|a| *a != "_").map(str::to_string)
                } else {
                    segs.last().cloned()
                };
                out.push(UsePath {
                    segs,
                    binding: Binding::Name(binding),
                    public: false,
                });
                return;
            }
            // Something this scanner does not know: skip it rather than loop.
            _ => {
                *at += 1;
                return;
            }
        }
    }
}

/// What one file declares and refers to. A scope is the path of inline modules (`mod x { … }`)
/// inside the file, empty for the file's own module.
#[derive(Default, Debug)]
struct Parsed {
    /// `mod x;` (false) and `mod x { … }` (true), in order.
    mods: Vec<(Vec<String>, String, bool)>,
    uses: Vec<(Vec<String>, UsePath, usize)>,
    /// Paths in code of two or more segments (`crate::a::X`, `super::f`, `child::g`).
    paths: Vec<(Vec<String>, Vec<String>, usize)>,
    /// Names of items defined in each scope (`fn`, `struct`, `enum`, …).
    defines: BTreeSet<(Vec<String>, String)>,
}

const ITEM_KEYWORDS: &[&str] = &[
    "fn", "struct", "enum", "trait", "type", "const", "static", "union", "mod",
];

fn parse(src: &str) -> Parsed {
    let toks = drop_test_items(tokenize(&blank_comments_and_literals(src)));
    let text = |i: usize| toks.get(i).map_or("", |t| t.text.as_str());
    let mut p = Parsed::default();
    let mut scope: Vec<String> = Vec::new();
    // For each open brace: whether it opened an inline module.
    let mut braces: Vec<bool> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = text(i);
        let prev = if i == 0 { ";" } else { text(i - 1) };
        match t {
            "{" => braces.push(false),
            "}" => {
                let closes_module = braces.pop() == Some(true);
                if closes_module {
                    scope.pop();
                }
            }
            "mod" if is_ident(text(i + 1)) && [";", "{"].contains(&text(i + 2)) => {
                let name = text(i + 1).to_string();
                let inline = text(i + 2) == "{";
                p.mods.push((scope.clone(), name.clone(), inline));
                p.defines.insert((scope.clone(), name.clone()));
                if inline {
                    scope.push(name);
                    braces.push(true);
                }
                i += 3;
                continue;
            }
            "use" if [";", "{", "}", "]", ")", "pub"].contains(&prev) => {
                let mut at = i + 1;
                let mut paths = Vec::new();
                while at < toks.len() && text(at) != ";" {
                    use_tree(&toks, &mut at, Vec::new(), &mut paths);
                }
                // `pub use` or `pub(…) use`.
                let public =
                    prev == "pub" || (prev == ")" && (2..=5).any(|k| i >= k && text(i - k) == "pub"));
                for mut u in paths {
                    u.public = public;
                    p.uses.push((scope.clone(), u, toks[i].pos));
                }
                i = at + 1;
                continue;
            }
            "macro_rules" if text(i + 1) == "!" => {
                p.defines.insert((scope.clone(), text(i + 2).to_string()));
            }
            t if ITEM_KEYWORDS.contains(&t) && is_ident(text(i + 1)) => {
                p.defines.insert((scope.clone(), text(i + 1).to_string()));
            }
            // A path: starts here (not after `::` or `.`), has a `::`, and is not `pub(in path)`.
            t if is_ident(t)
                && text(i + 1) == "::"
                && ![".", "::"].contains(&prev)
                && !(prev == "in" && i >= 2 && text(i - 2) == "(") =>
            {
                let mut segs = vec![t.to_string()];
                let mut at = i;
                while text(at + 1) == "::" && is_ident(text(at + 2)) {
                    segs.push(text(at + 2).to_string());
                    at += 2;
                }
                p.paths.push((scope.clone(), segs, toks[i].pos));
                i = at + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    p
}

/// A module of a crate: a file, or an inline `mod x { … }` in one.
#[derive(Debug)]
struct Module {
    file: usize,
    parent: Option<usize>,
    root: usize,
    children: BTreeMap<String, usize>,
    uses: Vec<UsePath>,
    defines: BTreeSet<String>,
}

#[derive(Debug)]
struct SourceFile {
    path: PathBuf,
    text: String,
    parsed: Parsed,
    /// The module of each scope of the file.
    scopes: BTreeMap<Vec<String>, usize>,
}

/// The source files of some crates, their modules, and the file-to-file references.
#[derive(Default, Debug)]
struct Sources {
    files: Vec<SourceFile>,
    modules: Vec<Module>,
}

/// Reads a file; `None` when it does not exist.
type Read<'a> = &'a dyn Fn(&Path) -> Option<String>;

impl Sources {
    /// Loads the crate whose root file is `root` (`src/lib.rs`, `src/main.rs`, `src/bin/x.rs`),
    /// following `mod x;` declarations.
    fn add_crate(&mut self, root: &Path, read: Read<'_>) {
        if self.files.iter().any(|f| f.path == root) {
            return;
        }
        let Some(text) = read(root) else { return };
        let module = self.modules.len();
        self.modules.push(Module {
            file: self.files.len(),
            parent: None,
            root: module,
            children: BTreeMap::new(),
            uses: Vec::new(),
            defines: BTreeSet::new(),
        });
        let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
        self.add_file(root.to_path_buf(), text, dir, module, read);
    }

    /// Adds the file `path` as the module `module`; its out-of-line child modules are in `dir`.
    fn add_file(&mut self, path: PathBuf, text: String, dir: PathBuf, module: usize, read: Read<'_>) {
        let file = self.files.len();
        self.modules[module].file = file;
        let parsed = parse(&text);
        let mut scopes = BTreeMap::from([(Vec::new(), module)]);
        let mut pending = Vec::new();
        for (scope, name, inline) in &parsed.mods {
            let Some(&parent) = scopes.get(scope) else {
                continue;
            };
            let child = self.modules.len();
            self.modules.push(Module {
                file,
                parent: Some(parent),
                root: self.modules[parent].root,
                children: BTreeMap::new(),
                uses: Vec::new(),
                defines: BTreeSet::new(),
            });
            self.modules[parent].children.insert(name.clone(), child);
            let mut scoped = scope.clone();
            scoped.push(name.clone());
            if *inline {
                scopes.insert(scoped, child);
            } else {
                let base = scope.iter().fold(dir.clone(), |d, s| d.join(s));
                pending.push((child, base, name.clone()));
            }
        }
        for (scope, u, _) in &parsed.uses {
            if let Some(&m) = scopes.get(scope) {
                self.modules[m].uses.push(u.clone());
            }
        }
        for (scope, name) in &parsed.defines {
            if let Some(&m) = scopes.get(scope) {
                self.modules[m].defines.insert(name.clone());
            }
        }
        self.files.push(SourceFile {
            path,
            text,
            parsed,
            scopes,
        });
        for (child, base, name) in pending {
            let flat = base.join(format!("{name}.rs"));
            let nested = base.join(&name).join("mod.rs");
            if let Some(text) = read(&flat) {
                self.add_file(flat, text, base.join(&name), child, read);
            } else if let Some(text) = read(&nested) {
                self.add_file(nested, text, base.join(&name), child, read);
            }
        }
    }

    /// Where a path written in module `m` starts: a module and the segments left to resolve in
    /// it; `None` for a path into another crate (or one this scanner cannot place).
    fn start(&self, m: usize, segs: &[String], in_use: bool) -> Option<(usize, Vec<String>)> {
        let first = segs.first()?.as_str();
        let module = &self.modules[m];
        match first {
            "crate" | "$crate" => Some((module.root, segs[1..].to_vec())),
            "self" => Some((m, segs[1..].to_vec())),
            "super" => {
                let mut at = m;
                let mut rest = segs;
                while rest.first().is_some_and(|s| s == "super") {
                    at = self.modules[at].parent?;
                    rest = &rest[1..];
                }
                Some((at, rest.to_vec()))
            }
            _ if module.children.contains_key(first) => Some((m, segs.to_vec())),
            // A name imported by a `use` of this module (a `use x;` of a crate binds itself).
            _ if !(in_use && segs.len() == 1)
                && module
                    .uses
                    .iter()
                    .any(|u| u.binding == Binding::Name(Some(first.into()))) =>
            {
                Some((m, segs.to_vec()))
            }
            _ if in_use && module.defines.contains(first) => Some((m, segs.to_vec())),
            _ => None,
        }
    }

    /// The file that `rest`, a path inside module `m`, leads to: the deepest module file on the
    /// way, following `use` re-exports to where an item is defined. `None`: another crate.
    fn resolve(&self, m: usize, rest: &[String], depth: u32) -> Option<usize> {
        let module = &self.modules[m];
        let Some(name) = rest.first() else {
            return Some(module.file);
        };
        if depth > 16 {
            return Some(module.file);
        }
        if let Some(&child) = module.children.get(name) {
            return self.resolve(child, &rest[1..], depth + 1);
        }
        if let Some(u) = module
            .uses
            .iter()
            .find(|u| u.binding == Binding::Name(Some(name.clone())))
        {
            let (at, mut path) = self.start(m, &u.segs, true)?;
            path.extend_from_slice(&rest[1..]);
            return self.resolve(at, &path, depth + 1);
        }
        if module.defines.contains(name) {
            return Some(module.file);
        }
        for u in module.uses.iter().filter(|u| u.binding == Binding::Glob) {
            if let Some((at, path)) = self.start(m, &u.segs, true)
                && let Some(g) = self.module_at(at, &path)
                && self.has_name(g, name)
            {
                return self.resolve(g, rest, depth + 1);
            }
        }
        Some(module.file)
    }

    /// The module that `path` inside `m` names, if it names one.
    fn module_at(&self, m: usize, path: &[String]) -> Option<usize> {
        path.iter()
            .try_fold(m, |at, seg| self.modules[at].children.get(seg).copied())
    }

    fn has_name(&self, m: usize, name: &str) -> bool {
        let module = &self.modules[m];
        module.children.contains_key(name)
            || module.defines.contains(name)
            || module
                .uses
                .iter()
                .any(|u| u.binding == Binding::Name(Some(name.into())))
    }

    /// File-to-file references: for each (from, to), the first position creating it.
    fn edges(&self) -> BTreeMap<(usize, usize), usize> {
        let mut edges = BTreeMap::new();
        for (f, file) in self.files.iter().enumerate() {
            let uses = file
                .parsed
                .uses
                .iter()
                .filter(|(_, u, _)| !u.public)
                .map(|(s, u, pos)| (s, &u.segs, *pos, true));
            let paths = file
                .parsed
                .paths
                .iter()
                .map(|(s, segs, pos)| (s, segs, *pos, false));
            for (scope, segs, pos, in_use) in uses.chain(paths) {
                let Some(&m) = file.scopes.get(scope) else {
                    continue;
                };
                let Some((at, rest)) = self.start(m, segs, in_use) else {
                    continue;
                };
                if let Some(to) = self.resolve(at, &rest, 0)
                    && to != f
                {
                    edges.entry((f, to)).or_insert(pos);
                }
            }
        }
        edges
    }

    /// The line at byte `pos` of file `f`, as `path:line: text`.
    fn line(&self, f: usize, pos: usize, root: &Path) -> String {
        let file = &self.files[f];
        let n = file.text[..pos].matches('\n').count();
        let text = file.text.lines().nth(n).unwrap_or_default().trim();
        format!("{}:{}: {text}", self.name(f, root), n + 1)
    }

    fn name(&self, f: usize, root: &Path) -> String {
        let p = &self.files[f].path;
        p.strip_prefix(root).unwrap_or(p).display().to_string()
    }

    /// The strongly connected components of more than one file (Tarjan), each sorted.
    fn circles(&self, edges: &BTreeMap<(usize, usize), usize>) -> Vec<Vec<usize>> {
        struct Tarjan<'a> {
            next: &'a [Vec<usize>],
            index: Vec<Option<usize>>,
            low: Vec<usize>,
            stack: Vec<usize>,
            on_stack: Vec<bool>,
            counter: usize,
            out: Vec<Vec<usize>>,
        }
        impl Tarjan<'_> {
            fn visit(&mut self, v: usize) {
                self.index[v] = Some(self.counter);
                self.low[v] = self.counter;
                self.counter += 1;
                self.stack.push(v);
                self.on_stack[v] = true;
                for &w in &self.next[v] {
                    match self.index[w] {
                        None => {
                            self.visit(w);
                            self.low[v] = self.low[v].min(self.low[w]);
                        }
                        Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                        Some(_) => {}
                    }
                }
                if Some(self.low[v]) == self.index[v] {
                    let mut scc = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack[w] = false;
                        scc.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if scc.len() > 1 {
                        scc.sort_unstable();
                        self.out.push(scc);
                    }
                }
            }
        }
        let n = self.files.len();
        let mut next = vec![Vec::new(); n];
        for &(a, b) in edges.keys() {
            next[a].push(b);
        }
        let mut t = Tarjan {
            next: &next,
            index: vec![None; n],
            low: vec![0; n],
            stack: Vec::new(),
            on_stack: vec![false; n],
            counter: 0,
            out: Vec::new(),
        };
        for v in 0..n {
            if t.index[v].is_none() {
                t.visit(v);
            }
        }
        t.out.sort();
        t.out
    }

    /// Every circle, with one line creating each edge in it.
    fn describe_circles(&self, root: &Path) -> Vec<String> {
        let edges = self.edges();
        self.circles(&edges)
            .iter()
            .map(|scc| {
                let names: Vec<String> = scc.iter().map(|&f| self.name(f, root)).collect();
                let mut s = format!("circle between {}:", names.join(", "));
                for (&(a, b), &pos) in &edges {
                    if scc.contains(&a) && scc.contains(&b) {
                        s += &format!(
                            "\n    {} -> {}   ({})",
                            self.name(a, root),
                            self.name(b, root),
                            self.line(a, pos, root)
                        );
                    }
                }
                s
            })
            .collect()
    }
}

/// The workspace members' library and binary crate roots under their `src/` directories.
fn crate_roots(meta: &Value) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for package in members(meta) {
        let dir = Path::new(str_of(package, "manifest_path"))
            .parent()
            .expect("manifest dir")
            .join("src");
        for target in package["targets"].as_array().into_iter().flatten() {
            let src = PathBuf::from(str_of(target, "src_path"));
            let kinds: Vec<&str> = target["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let code = kinds
                .iter()
                .any(|k| ["lib", "rlib", "proc-macro", "bin"].contains(k));
            if code && src.starts_with(&dir) {
                roots.push(src);
            }
        }
    }
    roots
}

#[test]
fn no_import_circle_between_files() {
    let meta = cargo_metadata();
    let mut sources = Sources::default();
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    for root in crate_roots(&meta) {
        sources.add_crate(&root, &read);
    }
    assert!(sources.files.len() > 10, "the scanner found too few source files");
    let circles = sources.describe_circles(&workspace_root());
    assert!(
        circles.is_empty(),
        "{} import circle(s) between source files; move the shared items to the file that owns them \
         so that imports go one way:\n{}",
        circles.len(),
        circles.join("\n")
    );
}

/// Text that only `pxb-telemetry` may write: a `tracing` subscriber setup and Prometheus
/// exposition lines.
const TELEMETRY_ONLY: &[&str] = &["tracing_subscriber::", "# TYPE ", "# HELP "];

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_telemetry_crate_sets_up_logs_or_writes_metrics() {
    let meta = cargo_metadata();
    let mut files = Vec::new();
    for package in members(&meta) {
        let name = str_of(package, "name");
        if name == "pxb-telemetry" || !RULES.iter().any(|r| r.name == name && r.product) {
            continue;
        }
        let dir = Path::new(str_of(package, "manifest_path"))
            .parent()
            .expect("manifest dir")
            .join("src");
        rust_files(&dir, &mut files);
    }
    assert!(files.len() > 10, "too few product sources found: {files:?}");
    let root = workspace_root();
    let mut bad = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            if let Some(what) = TELEMETRY_ONLY.iter().find(|w| line.contains(*w)) {
                let path = file.strip_prefix(&root).unwrap_or(file).display();
                bad.push(format!("{path}:{}: {what:?} in {:?}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "logging setup and metric exposition belong to pxb-telemetry (pxb_telemetry::init, \
         pxb_telemetry::metrics::encode):\n{}",
        bad.join("\n")
    );
}

// ------------------------------------------------------------------------------------------------
// The scanner itself, on made-up crates (so that it cannot pass by finding nothing).
// ------------------------------------------------------------------------------------------------

fn made_up(files: &[(&str, &str)]) -> Sources {
    let map: HashMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    let mut sources = Sources::default();
    sources.add_crate(Path::new("src/lib.rs"), &|p: &Path| map.get(p).cloned());
    sources
}

fn named_edges(s: &Sources) -> BTreeSet<(String, String)> {
    let root = Path::new("");
    s.edges()
        .keys()
        .map(|&(a, b)| (s.name(a, root), s.name(b, root)))
        .collect()
}

fn edge(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn the_scanner_finds_edges_and_circles() {
    // One way: a -> b only, through a group, a re-export and a path in code.
    let s = made_up(&[
        ("src/lib.rs", "mod a;\nmod b;\npub use b::Thing;\n"),
        (
            "src/a.rs",
            "use crate::{Thing, b::{self}};\npub fn f() -> Thing { crate::b::make() }\n",
        ),
        (
            "src/b/mod.rs",
            "pub struct Thing;\npub fn make() -> Thing { Thing }\n",
        ),
    ]);
    assert_eq!(s.files.len(), 3);
    let edges = named_edges(&s);
    assert!(edges.contains(&edge("src/a.rs", "src/b/mod.rs")), "{edges:?}");
    assert!(
        !edges.contains(&edge("src/a.rs", "src/lib.rs")),
        "re-exports are followed: {edges:?}"
    );
    assert!(s.describe_circles(Path::new("")).is_empty());

    // A circle: a uses b's item by `super::`, b names a's item by a full path in code.
    let s = made_up(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "use super::b::B as Bee;\npub struct A(Bee);\n"),
        (
            "src/b.rs",
            "pub struct B;\npub fn f() -> Option<crate::a::A> { None }\n",
        ),
    ]);
    let circles = s.describe_circles(Path::new(""));
    assert_eq!(circles.len(), 1, "{circles:?}");
    assert!(circles[0].contains("src/a.rs -> src/b.rs   (src/a.rs:1: use super::b::B as Bee;)"));
    assert!(circles[0].contains("src/b.rs -> src/a.rs   (src/b.rs:2:"));

    // Comments, strings and test-only items make no edge.
    let s = made_up(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "pub struct A;\n"),
        (
            "src/b.rs",
            "//! See [`crate::a::A`].\n/* use crate::a::A; */\nconst S: &str = \"crate::a::A\";\n\
             const R: &str = r#\"crate::a::A\"#;\nconst C: char = '\"';\n\
             #[cfg(test)]\nuse crate::a::A;\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n",
        ),
    ]);
    assert!(named_edges(&s).is_empty(), "{:?}", named_edges(&s));
}

#[test]
fn the_dependency_rule_catches_violations() {
    let dep = |name: &str, kind: Value| serde_json::json!({"name": name, "path": "/x", "kind": kind, "optional": false});
    let package =
        |name: &str, deps: Vec<Value>| serde_json::json!({"id": name, "name": name, "dependencies": deps});
    let normal = |pkg: &str| serde_json::json!({"pkg": pkg, "dep_kinds": [{"kind": null}]});
    let meta = serde_json::json!({
        "workspace_members": ["pxb-core", "pxb-azure", "pxb-gardener", "pxb-telemetry", "pxb-daemon", "pxb-tests", "pxb-new"],
        "packages": [
            package("pxb-core", vec![dep("pxb-azure", Value::Null)]),
            package("pxb-azure", vec![dep("pxb-core", Value::Null), dep("pxb-gardener", Value::Null)]),
            package("pxb-gardener", vec![dep("pxb-core", Value::Null)]),
            package("pxb-telemetry", vec![dep("pxb-core", Value::Null)]),
            package("pxb-daemon", vec![dep("pxb-core", Value::Null), dep("pxb-tests", "dev".into())]),
            package("pxb-tests", vec![dep("pxb-daemon", Value::Null)]),
            package("pxb-new", vec![]),
            package("url", vec![]),
            package("reqwest", vec![]),
        ],
        "resolve": {"nodes": [
            {"id": "pxb-core", "deps": [normal("url")]},
            {"id": "url", "deps": [normal("reqwest")]},
            {"id": "reqwest", "deps": []},
        ]},
    });
    let bad = dependency_violations(&meta).join("\n");
    for expected in [
        "pxb-new: a workspace member the rule table does not name",
        "pxb-core has a normal dependency on pxb-azure, but the rule allows it only none",
        "pxb-azure has a normal dependency on pxb-gardener: providers never depend on each other",
        "pxb-daemon has a dev dependency on pxb-tests, but the rule allows it only pxb-core, pxb-harness, pxb-sim",
        "pxb-telemetry has a normal dependency on pxb-core, but the rule allows it only none",
        "pxb-core depends on reqwest (pxb-core -> url -> reqwest): the core is network-free",
    ] {
        assert!(bad.contains(expected), "{expected:?} not in:\n{bad}");
    }
    assert!(!bad.contains("pxb-tests has"), "{bad}");
}
