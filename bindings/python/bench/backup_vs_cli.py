"""Python ``Location.backup_volume`` against the ``pxb`` CLI on the same tree, side by side.

Generates a reproducible tree (seeded), then for each round backs it up into fresh ``file://``
locations with each contender, alternating which goes first:

- ``cli``: ``pxb volume backup --location file://… --path TREE --json`` (a process);
- ``python``: a Python process that imports ``pxb``, opens the location and calls
  ``backup_volume(TREE)``;
- ``python+progress``: the same with a ``progress`` callable.

Wall time is measured around each process (start-up and import included, as an automation script
would pay them); for the Python contenders the time of the call alone is reported too. Each run
checks that every contender stored the same number of files and bytes. The tree is read once
before the first round and ``sync`` runs before every timed run, so each finds the data in the
page cache and nothing of an earlier run still being written back.

Usage (see BENCHMARKS.md for the build steps)::

    python bindings/python/bench/backup_vs_cli.py --pxb target/release/pxb --mib 2048 --rounds 3

Prints a Markdown table and, last, one JSON line with every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

WORDS = (
    b"backup cluster namespace volume restore tenant shoot garden agent server chunk manifest "
    b"location identity token azure blob container lease status"
).split()

PY_BACKUP = """
import json, sys, time
t0 = time.perf_counter()
import pxb
loc = pxb.Location.open(sys.argv[1])
calls = 0
def progress(done, total):
    global calls
    calls += 1
t1 = time.perf_counter()
b = loc.backup_volume(sys.argv[2], progress=progress if sys.argv[3] == "1" else None)
t2 = time.perf_counter()
print(json.dumps({"call_s": t2 - t1, "files": b.files, "bytes": b.bytes,
                  "stored_bytes": b.stored_bytes, "progress_calls": calls}))
"""


def text_bytes(rng: random.Random, size: int) -> bytes:
    """Compressible, text-like bytes."""
    out = bytearray()
    while len(out) < size:
        out += rng.choice(WORDS)
        out += b"\n" if rng.random() < 1 / 12 else b" "
    return bytes(out[:size])


def generate(root: Path, total: int, seed: int) -> int:
    """About 30 % of the bytes in small files (1–64 KiB, 200 per directory), 70 % in large files
    (8–200 MiB, capped at what is left); half the files text-like, half random. Returns the
    number of files."""
    rng = random.Random(seed)
    block = text_bytes(rng, 1 << 20)
    written, n = 0, 0

    def write(path: Path, size: int) -> None:
        nonlocal written, n
        path.parent.mkdir(parents=True, exist_ok=True)
        compressible = rng.random() < 0.5
        with open(path, "wb") as f:
            left = size
            while left > 0:
                k = min(left, 1 << 20)
                if compressible:
                    off = rng.randrange(0, len(block) - k + 1)
                    f.write(block[off : off + k])
                else:
                    f.write(rng.randbytes(k))
                left -= k
        written += size
        n += 1

    while written < total * 3 // 10:
        write(root / "small" / f"d{n // 200:03}" / f"f{n:06}.dat", rng.randrange(1024, 64 * 1024))
    i = 0
    while written < total:
        size = min(rng.randrange(8 << 20, 200 << 20), max(total - written, 1 << 20))
        write(root / "large" / f"f{i:04}.bin", size)
        i += 1
    return n


def read_all(root: Path) -> None:
    for base, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(base, name), "rb") as f:
                while f.read(1 << 22):
                    pass


def run_cli(pxb: str, url: str, tree: Path) -> Dict[str, float]:
    t = time.perf_counter()
    out = subprocess.run(
        [pxb, "volume", "backup", "--location", url, "--path", str(tree), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    wall = time.perf_counter() - t
    stats = json.loads(out)["stats"]
    return {"wall_s": wall, "files": stats["files"], "bytes": stats["bytes"], "stored_bytes": stats["stored_bytes"]}


def run_python(python: str, url: str, tree: Path, progress: bool) -> Dict[str, float]:
    t = time.perf_counter()
    out = subprocess.run(
        [python, "-c", PY_BACKUP, url, str(tree), "1" if progress else "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    wall = time.perf_counter() - t
    result: Dict[str, float] = json.loads(out)
    result["wall_s"] = wall
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pxb", required=True, help="the pxb CLI (a release build)")
    ap.add_argument("--python", default=sys.executable, help="a Python with the pxb wheel installed")
    ap.add_argument("--mib", type=int, default=2048, help="size of the tree")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", help="a directory for the tree and the locations (default: a temporary one)")
    args = ap.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="pxb-bench-python-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    t = time.perf_counter()
    files = generate(tree, args.mib << 20, args.seed)
    print(f"tree: {args.mib} MiB in {files} files, generated in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    read_all(tree)
    subprocess.run(["sync"], check=True)

    contenders = {
        "cli": lambda url: run_cli(args.pxb, url, tree),
        "python": lambda url: run_python(args.python, url, tree, False),
        "python+progress": lambda url: run_python(args.python, url, tree, True),
    }
    names = list(contenders)
    runs: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            loc = work / f"loc-{name}-{r}"
            if loc.exists():
                shutil.rmtree(loc)
            subprocess.run(["sync"], check=True)
            result = contenders[name](f"file://{loc}")
            runs[name].append(result)
            print(f"round {r + 1} {name}: {result['wall_s']:.2f} s", file=sys.stderr)
            shutil.rmtree(loc)
        first = runs["cli"][-1]
        for name in names[1:]:
            got = runs[name][-1]
            for key in ("files", "bytes", "stored_bytes"):
                if got[key] != first[key]:
                    print(f"round {r + 1}: {name} {key} {got[key]} != cli {first[key]}", file=sys.stderr)
                    return 1

    cli = statistics.median(x["wall_s"] for x in runs["cli"])
    print(f"| | median wall (s) | runs (s) | call only, median (s) | ratio to CLI |")
    print("|---|---|---|---|---|")
    for name in names:
        walls = [x["wall_s"] for x in runs[name]]
        med = statistics.median(walls)
        call = statistics.median(x["call_s"] for x in runs[name]) if name != "cli" else None
        print(
            f"| {name} | {med:.2f} | {', '.join(f'{w:.2f}' for w in walls)} | "
            f"{'' if call is None else f'{call:.2f}'} | {med / cli:.3f} |"
        )
    print(
        json.dumps(
            {"mib": args.mib, "files": files, "rounds": args.rounds, "runs": runs},
            separators=(",", ":"),
        )
    )
    if not args.work:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
