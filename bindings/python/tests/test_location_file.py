"""The engine on a ``file://`` location, sync forms: backup → list → restore → verify → delete →
gc round trips, incremental backups and parent selection, tags and ``latest``, progress
callbacks, and the GIL being released while a call works."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import pxb


def make_tree(root: Path, files: int = 20, size: int = 50_000, seed: int = 0) -> Dict[str, bytes]:
    """A tree of ``files`` incompressible files (some in subdirectories) and a symlink; returns
    the content by relative path."""
    rng = __import__("random").Random(seed)
    content: Dict[str, bytes] = {}
    for i in range(files):
        rel = f"d{i % 3}/f{i}.bin" if i % 2 else f"f{i}.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size + i)
        path.write_bytes(data)
        content[rel] = data
    (root / "link").symlink_to("f0.bin")
    return content


def read_tree(root: Path) -> Dict[str, bytes]:
    """The regular files under ``root`` by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def chunk_files(location_dir: Path) -> List[Path]:
    """The chunk objects a file:// location holds."""
    chunks = location_dir / "pxb" / "chunks"
    return [p for p in chunks.rglob("*") if p.is_file()] if chunks.exists() else []


def next_second() -> None:
    """Waits until the wall clock's second changes (backup ids have a resolution of a second)."""
    now = int(time.time())
    while int(time.time()) == now:
        time.sleep(0.02)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 MB in 200 files: a backup of it takes a while (read-only for the tests)."""
    root = tmp_path_factory.mktemp("big")
    make_tree(root, files=200, size=1_000_000, seed=7)
    return root


@pytest.fixture
def loc_dir(tmp_path: Path) -> Path:
    return tmp_path / "location"


@pytest.fixture
def loc(loc_dir: Path) -> pxb.Location:
    return pxb.Location.open(f"file://{loc_dir}")


def test_round_trip(tmp_path: Path, loc_dir: Path, loc: pxb.Location) -> None:
    src = tmp_path / "src"
    content = make_tree(src)
    assert loc.url == f"file://{loc_dir}"
    assert repr(loc) == f"pxb.Location('file://{loc_dir}')"

    b = loc.backup_volume(src)
    assert isinstance(b, pxb.VolumeBackup)
    assert b.files == len(content)
    assert b.bytes == sum(len(v) for v in content.values())
    assert b.symlinks == 1
    assert b.dirs >= 4  # the root and d0..d2
    assert b.status == "completed"
    assert b.parent is None
    assert b.bytes_read == b.bytes
    assert b.stored_bytes > b.bytes // 2  # random data does not compress
    assert b.new_chunks == b.chunks > 0
    assert b.source == str(src.resolve())
    assert b.warnings == []
    assert repr(b).startswith(f"pxb.VolumeBackup(id='{b.id}', status='completed'")

    listed = loc.list_backups()
    assert [s.id for s in listed] == [b.id]
    s = listed[0]
    assert isinstance(s, pxb.BackupSummary)
    assert (s.kind, s.status, s.tag, s.source) == ("volume", "completed", None, str(src.resolve()))
    assert (s.bytes, s.stored_bytes, s.items) == (b.bytes, b.stored_bytes, b.files)
    assert abs(s.created - time.time()) < 600
    assert s.created == b.created

    dst = tmp_path / "dst"
    r = loc.restore_volume(b.id, target=dst)
    assert isinstance(r, pxb.VolumeRestore)
    assert (r.backup, r.files, r.symlinks, r.bytes) == (b.id, b.files, 1, b.bytes)
    assert r.target == str(dst)
    assert read_tree(dst) == content
    assert os.readlink(dst / "link") == "f0.bin"

    v = loc.verify()
    assert isinstance(v, pxb.VerifyReport)
    assert v.ok and not v.deep
    assert v.missing == [] and v.missing_count == 0 and v.corrupt == []
    assert [x.id for x in v.backups] == [b.id]
    assert v.backups[0].checked > 0 and v.backups[0].status == "ok"
    deep = loc.verify(deep=True)
    assert deep.ok and deep.deep

    chunks = chunk_files(loc_dir)
    assert len(chunks) == b.chunks

    d = loc.delete_backup(b.id)
    assert isinstance(d, pxb.DeletedBackup)
    assert d.id == b.id
    assert d.objects[0] == f"pxb/manifests/{b.id}"
    assert loc.list_backups() == []

    dry = loc.gc(dry_run=True, grace_secs=0)
    assert dry.dry_run and dry.deleted_chunks == len(chunks)
    assert (dry.folded, dry.compaction_error) == (None, None), "a dry run compacts nothing"
    assert len(chunk_files(loc_dir)) == len(chunks), "a dry run deletes nothing"
    kept = loc.gc()  # the default grace period keeps the young chunks
    assert kept.deleted_chunks == 0 and kept.kept_in_grace == len(chunks)
    g = loc.gc(grace_secs=0)
    assert isinstance(g, pxb.GcReport)
    assert (g.backups, g.deleted_chunks, g.deferred) == (0, len(chunks), None)
    # The compaction after the sweep ran; the only marker was young (and is deleted).
    assert (g.folded, g.compaction_error) == (0, None)
    assert g.deleted_bytes > 0
    assert chunk_files(loc_dir) == []
    assert loc.verify().backups == []


def test_upgrade_moves_a_format_1_location_to_the_current_format_once(
    tmp_path: Path, loc_dir: Path, loc: pxb.Location
) -> None:
    with pytest.raises(pxb.NotFound):
        loc.upgrade()  # nothing there yet: nothing is written either
    assert not (loc_dir / "pxb" / "config").exists()

    src = tmp_path / "src"
    content = make_tree(src, files=4)
    first = loc.backup_volume(src)
    current = loc.upgrade()
    assert isinstance(current, pxb.LocationUpgrade)
    assert not current.upgraded and current.from_format == current.to_format >= 2

    # The location as a pxb of format 1 left it: the same config with format 1 (the local store
    # keeps a small header before the object's JSON body).
    config_path = loc_dir / "pxb" / "config"
    current_field = f'"format":{current.to_format},'.encode()
    stored = config_path.read_bytes()
    assert stored.count(current_field) == 1, stored
    config_path.write_bytes(stored.replace(current_field, b'"format":1,'))
    up = loc.upgrade()
    assert (up.from_format, up.to_format, up.upgraded) == (1, current.to_format, True)
    assert repr(up) == f"pxb.LocationUpgrade(from_format=1, to_format={up.to_format}, upgraded=True)"
    assert current_field in config_path.read_bytes()
    again = loc.upgrade()
    assert (again.from_format, again.upgraded) == (up.to_format, False)

    # What the location held before the upgrade reads as before.
    assert [b.id for b in loc.list_backups()] == [first.id]
    loc.restore_volume(first.id, target=tmp_path / "dst")
    assert read_tree(tmp_path / "dst") == content
    assert loc.verify(deep=True).ok


def test_verify_reports_missing_objects(tmp_path: Path, loc_dir: Path, loc: pxb.Location) -> None:
    src = tmp_path / "src"
    make_tree(src, files=6)
    b = loc.backup_volume(src)
    victim = sorted(chunk_files(loc_dir))[0]
    victim.unlink()
    v = loc.verify()
    assert not v.ok
    assert v.missing_count == 1
    assert len(v.missing) == 1 and victim.name in v.missing[0]
    assert v.backups[0].id == b.id and v.backups[0].status == "missing"
    assert not v.backups[0].ok


def test_incremental_backup_reads_less_and_picks_its_parent(
    tmp_path: Path, loc: pxb.Location
) -> None:
    src = tmp_path / "src"
    content = make_tree(src, files=30)
    first = loc.backup_volume(src)
    changed = src / "f0.bin"
    changed.write_bytes(b"new content" * 1000)
    content["f0.bin"] = changed.read_bytes()

    second = loc.backup_volume(src)
    assert second.parent == first.id
    assert second.bytes_read < first.bytes_read
    assert second.bytes_read >= len(content["f0.bin"])
    assert second.stored_bytes < first.stored_bytes

    # Another directory without a tag gets no parent (the parent is picked by source path).
    other = tmp_path / "other"
    make_tree(other, files=3, seed=1)
    assert loc.backup_volume(other).parent is None

    # An explicit parent, and none.
    third = loc.backup_volume(src, parent=first.id)
    assert third.parent == first.id
    full = loc.backup_volume(src, no_parent=True)
    assert full.parent is None and full.bytes_read == full.bytes

    dst = tmp_path / "dst"
    loc.restore_volume(second.id, target=dst)
    assert read_tree(dst) == content


def test_tags_and_latest(tmp_path: Path, loc: pxb.Location) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    content_a = make_tree(a, files=4, seed=1)
    content_b = make_tree(b, files=5, seed=2)
    # Backup ids order by the second they were taken in: one second apart, "newest" is certain.
    a1 = loc.backup_volume(a, tag="alpha")
    next_second()
    b1 = loc.backup_volume(b, tag="beta")
    assert (a1.tag, b1.tag) == ("alpha", "beta")
    next_second()
    # The same tag from another directory is still incremental to the tag's newest backup.
    a2 = loc.backup_volume(b, tag="alpha")
    assert a2.parent == a1.id
    next_second()
    b2 = loc.backup_volume(b, tag="beta")
    assert b2.parent == b1.id

    assert [s.tag for s in loc.list_backups()] == ["alpha", "beta", "alpha", "beta"]

    r = loc.restore_volume(target=tmp_path / "latest")
    assert r.backup == b2.id
    r = loc.restore_volume("latest", target=tmp_path / "alpha", tag="alpha")
    assert r.backup == a2.id
    assert read_tree(tmp_path / "alpha") == content_b
    r = loc.restore_volume(a1.id, target=tmp_path / "first", tag="beta")  # a tag is ignored for an id
    assert r.backup == a1.id
    assert read_tree(tmp_path / "first") == content_a

    with pytest.raises(pxb.NotFound) as e:
        loc.restore_volume(target=tmp_path / "none", tag="gamma")
    assert str(e.value) == "not found: no volume backup in this location matches"


def test_progress_is_increasing_throttled_and_ends_at_the_total(
    tmp_path: Path, loc: pxb.Location
) -> None:
    src = tmp_path / "src"
    content = make_tree(src, files=120, size=250_000)
    total = sum(len(v) for v in content.values())
    calls: List[Tuple[float, int, int, str]] = []

    def progress(done: int, all_bytes: int) -> None:
        calls.append((time.monotonic(), done, all_bytes, threading.current_thread().name))

    start = time.monotonic()
    b = loc.backup_volume(src, progress=progress)
    elapsed = time.monotonic() - start
    assert b.bytes == total
    assert calls, "the callback was never called"
    assert all(c[2] == total for c in calls)
    done = [c[1] for c in calls]
    assert done == sorted(done) and len(set(done)) == len(done), done
    assert done[-1] == total
    # At most one call per 250 ms, plus the one at the end.
    assert len(calls) <= elapsed / 0.25 + 2, (len(calls), elapsed)
    gaps = [b[0] - a[0] for a, b in zip(calls, calls[1:-1])]
    assert all(g >= 0.2 for g in gaps), gaps

    restored: List[Tuple[int, int]] = []
    loc.restore_volume(b.id, target=tmp_path / "dst", progress=lambda d, t: restored.append((d, t)))
    assert restored and restored[-1] == (total, total)


def test_a_progress_callback_that_raises_cancels_the_backup(
    big_tree: Path, loc: pxb.Location
) -> None:
    total = sum(p.stat().st_size for p in big_tree.rglob("*.bin"))
    seen: List[int] = []

    def progress(done: int, all_bytes: int) -> None:
        seen.append(done)
        raise ValueError(f"stop at {done} of {all_bytes}")

    # One file at a time, so the first report (after 200 ms) comes well before the end.
    with pytest.raises(ValueError, match="stop at") as e:
        loc.backup_volume(big_tree, progress=progress, concurrency=1)
    assert len(seen) == 1, "the callback is not called again once it raised"
    assert str(e.value) == f"stop at {seen[0]} of {total}"
    assert seen[0] < total, "the exception came before the backup was done"
    assert loc.list_backups() == [], "the cancelled backup did not commit"
    # The location still works, and nothing is left running that could commit later.
    b = loc.backup_volume(big_tree)
    assert b.files == 200
    time.sleep(0.5)
    assert [s.id for s in loc.list_backups()] == [b.id]


def test_sync_calls_release_the_gil(big_tree: Path, loc: pxb.Location) -> None:
    src = big_tree
    ticks: List[float] = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    result: List[pxb.VolumeBackup] = []
    worker = threading.Thread(target=lambda: result.append(loc.backup_volume(src)))
    t = threading.Thread(target=ticker)
    t.start()
    start = time.monotonic()
    worker.start()
    worker.join()
    end = time.monotonic()
    stop.set()
    t.join()
    assert result and result[0].files == 200
    during = [x for x in ticks if start <= x <= end]
    # A call holding the GIL would leave the other thread no tick for its whole duration.
    assert end - start > 0.1, "the backup was too quick to tell"
    assert len(during) >= (end - start) / 0.01 * 0.3, (len(during), end - start)


def test_check_reports_every_step(loc: pxb.Location, loc_dir: Path) -> None:
    report = loc.check()
    assert isinstance(report, pxb.CheckReport)
    assert report.ok
    assert report.location == f"file://{loc_dir}"
    assert [s.step for s in report.steps] == [
        "configure",
        "list",
        "write",
        "read",
        "delete",
    ]
    assert all(s.outcome == "passed" and s.ok and s.error_kind is None for s in report.steps)
    text = str(report)
    assert text.startswith(f"checking file://{loc_dir}\nPASS configure")
    assert text.endswith("location OK: every step passed")
    assert repr(report) == f"pxb.CheckReport(location='file://{loc_dir}', ok=True)"
    assert not (loc_dir / "pxb-probe").exists() or not any((loc_dir / "pxb-probe").iterdir())


def test_check_fails_when_the_directory_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "gone"
    loc = pxb.Location.open(f"file://{root}")
    root.write_text("a file where the location's directory was")
    report = loc.check()
    assert not report.ok
    failed = [s for s in report.steps if s.outcome == "failed"]
    assert failed and not failed[0].ok and failed[0].error_kind is not None, report.steps
    assert failed[0].detail
    assert f"FAILED at step {failed[0].step!r}".replace("'", '"') in str(report)
