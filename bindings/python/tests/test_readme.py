"""The README's Python block runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from test_errors import REPO


def test_the_readmes_python_block_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "one python block in the README's Python section"
    script = tmp_path / "readme.py"
    script.write_text(blocks[0])
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].endswith(" bytes") and lines[-1], out.stdout
    assert "does not exist" in lines[-1] or "not found" in lines[-1].lower(), out.stdout
