//! Each binary carries what it needs: the agent links no SQLite and no server HTTP stack.
//!
//! Two views of the same rule: the agent's build (`--no-default-features --features agent`) has
//! neither crate in its dependency tree, and the `pxb-agent` binary the workspace builds (all
//! features on, so the linker alone keeps SQLite out) contains none of SQLite's own strings, which
//! the `pxb-server` binary next to it does contain.

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

#[test]
fn the_agent_build_depends_on_no_sqlite_and_no_server_http_stack() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |features: &[&str]| {
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
            .collect::<std::collections::BTreeSet<_>>()
    };
    let agent = tree(&["--no-default-features", "--features", "agent"]);
    let all = tree(&[]);
    for krate in ["rusqlite", "libsqlite3-sys", "axum"] {
        assert!(
            all.contains(krate),
            "the probe is broken: the full build should have {krate}"
        );
        assert!(!agent.contains(krate), "the agent's build depends on {krate}");
    }
    for krate in ["pxb-sim", "clap_complete", "indicatif"] {
        assert!(!agent.contains(krate), "the agent's build depends on {krate}");
    }
}
