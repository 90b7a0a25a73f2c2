//! Each binary carries what it needs: the agent links no SQLite, no server HTTP stack and no
//! Gardener provider; the command line without the demo (`--features cli`) links none of those,
//! nor the fleet simulator, nor the kube client the controllers run on.
//!
//! Two views of the same rule: the agent's and the command line's builds
//! (`--no-default-features --features agent` or `cli`) have none of those crates in their
//! dependency trees, and the `pxb-agent` binary the workspace builds (all features on, so the
//! linker alone keeps SQLite out) contains none of SQLite's own strings, which the `pxb-server`
//! binary next to it does contain.

use std::collections::BTreeSet;
use std::process::Command;

/// Strings compiled into every SQLite library.
const SQLITE_MARKERS: [&str; 2] = ["SQLite format 3", "sqlite_master"];

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn the_agent_binary_contains_no_sqlite() {
    let agent = std::fs::read(env!("CARGO_BIN_EXE_pxb-agent")).expect("read pxb-agent");
    let server = std::fs::read(env!("CARGO_BIN_EXE_pxb-server")).expect("read pxb-server");
    for marker in SQLITE_MARKERS {
        assert!(
            contains(&server, marker),
            "the probe is broken: pxb-server should contain {marker:?}"
        );
        assert!(
            !contains(&agent, marker),
            "pxb-agent contains SQLite ({marker:?})"
        );
    }
}

/// The crates (names) in `pxb-daemon`'s normal dependency tree with `features` (cargo's flags).
fn tree(features: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "-p",
            "pxb-daemon",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(features)
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_agent_build_depends_on_no_catalog_database_no_server_http_stack_and_no_gardener() {
    let agent = tree(&["--no-default-features", "--features", "agent"]);
    let all = tree(&[]);
    for krate in [
        "rusqlite",
        "libsqlite3-sys",
        "axum",
        "tokio-postgres",
        "deadpool-postgres",
    ] {
        assert!(
            all.contains(krate),
            "the probe is broken: the full build should have {krate}"
        );
        assert!(!agent.contains(krate), "the agent's build depends on {krate}");
    }
    // The agent talks to its own cluster through kube, but never to a garden.
    for krate in ["kube", "kube-client", "kube-runtime"] {
        assert!(
            agent.contains(krate),
            "the probe is broken: the agent's build should have {krate}"
        );
    }
    assert!(
        all.contains("pxb-gardener"),
        "the probe is broken: the full build should have pxb-gardener"
    );
    for krate in ["pxb-gardener", "pxb-sim", "clap_complete", "indicatif"] {
        assert!(!agent.contains(krate), "the agent's build depends on {krate}");
    }
}

/// `pxb` without the demo is a client of the server: no SQLite, no server HTTP stack, no
/// simulator, no controllers (so no kube client and no Gardener provider); the demo brings those:
/// `--features cli,demo` has them. Azure stays: the volume and location commands use it.
#[test]
fn the_cli_build_depends_on_no_sqlite_no_server_http_stack_no_simulator_and_no_kube() {
    let cli = tree(&["--no-default-features", "--features", "cli"]);
    let demo = tree(&["--no-default-features", "--features", "cli,demo"]);
    for krate in ["clap_complete", "indicatif", "serde_urlencoded", "pxb-azure"] {
        assert!(
            cli.contains(krate),
            "the probe is broken: the CLI's build should have {krate}"
        );
    }
    for krate in [
        "rusqlite",
        "libsqlite3-sys",
        "tokio-postgres",
        "axum",
        "pxb-sim",
        "kube",
        "kube-client",
        "kube-runtime",
        "pxb-gardener",
    ] {
        assert!(
            demo.contains(krate),
            "the probe is broken: the demo's build should have {krate}"
        );
        assert!(!cli.contains(krate), "the CLI's build depends on {krate}");
    }
}
