//! The README's main command, `pxb-demo`, runs to the end on a small fleet and reports what the
//! server saw.

use std::process::Command;

#[test]
fn the_demo_runs_a_small_fleet_through_the_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_pxb-demo"))
        .args([
            "--shoots",
            "5",
            "--location",
            "file",
            "--exit",
            "--support-channel",
        ])
        .output()
        .expect("run pxb-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pxb-demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("== pxb-server on http://127.0.0.1:"), "{stdout}");
    assert!(
        stdout.contains("1 Hibernated, 2 Ineligible, 4 Ready, 1 Unreachable"),
        "{stdout}"
    );
    assert!(stdout.contains("Valid on 4 of 4 clusters"), "{stdout}");
    assert!(stdout.contains("data and record deleted"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("pxb_server_backup_info{")
                && l.contains("status=\"Deleted\"")
                && l.contains("previous_status=\"Success\"")),
        "the deleted backup's info series: {stdout}"
    );
    assert!(
        stdout.contains("off (the default): the service received 0 bytes over 0 connection(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("registered true"), "{stdout}");
    assert!(
        stdout.contains("switched off again: nothing more is sent"),
        "{stdout}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_pxb-demo"))
        .args(["--location", "tape"])
        .output()
        .expect("run pxb-demo");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--location is file (the default) or azurite"));
}
