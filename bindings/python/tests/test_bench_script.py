"""The benchmark script of BENCHMARKS.md ("Python bindings against the CLI") runs and compares
like with like: on a small tree, every contender backs up the same files and bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_errors import REPO, pxb_binary


def test_the_backup_benchmark_runs_on_a_small_tree(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bindings" / "python" / "bench" / "backup_vs_cli.py"),
            "--pxb",
            pxb_binary(),
            "--mib",
            "4",
            "--rounds",
            "2",
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("| | median wall (s)")
    assert [line.split("|")[1].strip() for line in lines[2:5]] == ["cli", "python", "python+progress"]
    result = json.loads(lines[-1])
    assert result["mib"] == 4 and result["files"] > 10
    runs = result["runs"]
    assert set(runs) == {"cli", "python", "python+progress"}
    for name, rounds in runs.items():
        assert len(rounds) == 2, name
        for r in rounds:
            assert r["files"] == result["files"] and r["bytes"] >= 4 << 20, (name, r)
            assert r["wall_s"] > 0
    assert all(r["progress_calls"] >= 1 for r in runs["python+progress"])
    assert all(r["progress_calls"] == 0 for r in runs["python"])
