"""The ``_async`` forms under asyncio: the same round trip as the sync forms, progress, errors,
cancellation (the Rust work stops with the task) and an event loop that keeps running while a
call works."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import pxb


def make_tree(root: Path, files: int, size: int, seed: int = 0) -> Dict[str, bytes]:
    """``files`` incompressible files under ``root``; returns the content by relative path."""
    rng = random.Random(seed)
    content: Dict[str, bytes] = {}
    for i in range(files):
        rel = f"d{i % 4}/f{i}.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size + i)
        path.write_bytes(data)
        content[rel] = data
    return content


def read_tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def chunk_count(location_dir: Path) -> int:
    chunks = location_dir / "pxb" / "chunks"
    return sum(1 for p in chunks.rglob("*") if p.is_file()) if chunks.exists() else 0


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 MB in 300 files: a backup of it takes a while (read-only for the tests)."""
    root = tmp_path_factory.mktemp("big")
    make_tree(root, files=300, size=1_000_000, seed=3)
    return root


def test_async_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    content = make_tree(src, files=12, size=300_000)
    loc_dir = tmp_path / "location"
    loc = pxb.Location.open(f"file://{loc_dir}")

    async def main() -> None:
        report = await loc.check_async()
        assert report.ok and isinstance(report, pxb.CheckReport)

        first = await loc.backup_volume_async(src, tag="t")
        assert isinstance(first, pxb.VolumeBackup)
        assert first.files == 12 and first.bytes == sum(map(len, content.values()))
        assert first.parent is None and first.tag == "t"
        (src / "d0/f0.bin").write_bytes(b"changed")
        content["d0/f0.bin"] = b"changed"
        second = await loc.backup_volume_async(src, tag="t")
        assert second.parent == first.id
        assert second.bytes_read < first.bytes_read

        listed = await loc.list_backups_async()
        assert sorted(s.id for s in listed) == sorted([first.id, second.id])
        assert all(isinstance(s, pxb.BackupSummary) and s.kind == "volume" for s in listed)

        restored = await loc.restore_volume_async(second.id, target=tmp_path / "dst")
        assert isinstance(restored, pxb.VolumeRestore)
        assert restored.files == 12 and restored.backup == second.id
        assert read_tree(tmp_path / "dst") == content

        verified = await loc.verify_async(deep=True)
        assert verified.ok and verified.deep and len(verified.backups) == 2
        upgraded = await loc.upgrade_async()
        assert isinstance(upgraded, pxb.LocationUpgrade) and not upgraded.upgraded

        deleted = await loc.delete_backup_async(first.id)
        assert deleted.id == first.id and deleted.objects
        deleted = await loc.delete_backup_async(second.id)
        assert await loc.list_backups_async() == []

        dry = await loc.gc_async(True, grace_secs=0)
        assert dry.dry_run and dry.deleted_chunks > 0
        swept = await loc.gc_async(grace_secs=0)
        assert swept.deleted_chunks == dry.deleted_chunks
        assert chunk_count(loc_dir) == 0

        with pytest.raises(pxb.NotFound):
            await loc.delete_backup_async(first.id)
        with pytest.raises(pxb.NotFound):
            await loc.restore_volume_async(target=tmp_path / "none")

        await loc.create_container_async()  # nothing to do for file://

    asyncio.run(main())


def test_async_restore_of_latest_with_a_tag(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    content_a = make_tree(a, files=3, size=10_000, seed=1)
    make_tree(b, files=3, size=10_000, seed=2)
    loc = pxb.Location.open(f"file://{tmp_path / 'location'}")

    async def main() -> Tuple[str, str]:
        ba = await loc.backup_volume_async(a, tag="a")
        await loc.backup_volume_async(b, tag="b")
        r = await loc.restore_volume_async("latest", target=tmp_path / "dst", tag="a")
        return ba.id, r.backup

    expected, got = asyncio.run(main())
    assert got == expected
    assert read_tree(tmp_path / "dst") == content_a


def test_nothing_runs_until_the_coroutine_is_awaited(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, files=3, size=10_000)
    loc_dir = tmp_path / "location"
    loc = pxb.Location.open(f"file://{loc_dir}")
    loc.create_container()

    # Made outside a loop and never awaited: no backup, no chunk, even after a while.
    never = loc.backup_volume_async(src, tag="never")
    time.sleep(0.5)
    never.close()
    assert loc.list_backups() == [] and chunk_count(loc_dir) == 0

    async def main() -> pxb.VolumeBackup:
        # Made inside the running loop, which then runs other work: still nothing.
        later = loc.backup_volume_async(src, tag="later")
        await asyncio.sleep(0.5)
        assert await loc.list_backups_async() == [] and chunk_count(loc_dir) == 0
        # Awaited: it runs.
        return await later

    b = asyncio.run(main())
    assert b.tag == "later" and b.files == 3
    assert [s.id for s in loc.list_backups()] == [b.id] and chunk_count(loc_dir) > 0


def test_cancelling_a_task_made_with_create_task_stops_the_backup(big_tree: Path, tmp_path: Path) -> None:
    loc_dir = tmp_path / "location"
    loc = pxb.Location.open(f"file://{loc_dir}")

    async def main() -> None:
        task = asyncio.create_task(loc.backup_volume_async(big_tree, concurrency=1))
        while chunk_count(loc_dir) == 0:  # it started
            assert not task.done()
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
        written = chunk_count(loc_dir)
        await asyncio.sleep(1.0)
        assert chunk_count(loc_dir) == written, "chunks were still being written after cancellation"
        assert await loc.list_backups_async() == []

    asyncio.run(main())


def test_async_progress(big_tree: Path, tmp_path: Path) -> None:
    loc = pxb.Location.open(f"file://{tmp_path / 'location'}")
    total = sum(p.stat().st_size for p in big_tree.rglob("*.bin"))
    calls: List[Tuple[int, int]] = []

    async def main() -> pxb.VolumeBackup:
        return await loc.backup_volume_async(big_tree, progress=lambda d, t: calls.append((d, t)))

    b = asyncio.run(main())
    assert b.bytes == total
    assert calls and calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(done)


def test_async_progress_callback_that_raises(big_tree: Path, tmp_path: Path) -> None:
    loc = pxb.Location.open(f"file://{tmp_path / 'location'}")

    def progress(done: int, total: int) -> None:
        raise RuntimeError("no more progress, please")

    async def main() -> None:
        with pytest.raises(RuntimeError, match="no more progress, please"):
            await loc.backup_volume_async(big_tree, progress=progress, concurrency=1)

    asyncio.run(main())
    assert loc.list_backups() == []


def test_cancelling_a_backup_stops_the_work_and_the_loop_keeps_running(
    big_tree: Path, tmp_path: Path
) -> None:
    loc_dir = tmp_path / "location"
    loc = pxb.Location.open(f"file://{loc_dir}")
    ticks: List[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> Tuple[float, float]:
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loc.backup_volume_async(big_tree, concurrency=1), timeout=0.3)
        cancelled_after = time.monotonic() - started
        # The ticker ran all along: the loop was never blocked by the backup.
        during = [x for x in ticks if started <= x <= started + cancelled_after]
        assert len(during) >= 10, (len(during), cancelled_after)
        gaps = [b - a for a, b in zip(during, during[1:])]
        assert max(gaps) < 0.2, max(gaps)
        # The Rust work was dropped: nothing more is written, nothing commits.
        await asyncio.sleep(0.3)
        written = chunk_count(loc_dir)
        await asyncio.sleep(1.0)
        assert chunk_count(loc_dir) == written, "chunks were still being written after cancellation"
        assert await loc.list_backups_async() == []
        stop.set()
        await t
        return cancelled_after, time.monotonic() - started

    cancelled_after, _ = asyncio.run(main())
    assert cancelled_after < 1.0, cancelled_after
    # The location is usable afterwards.
    b = loc.backup_volume(big_tree)
    assert b.files == 300


def test_the_loop_runs_while_a_backup_runs(big_tree: Path, tmp_path: Path) -> None:
    loc = pxb.Location.open(f"file://{tmp_path / 'location'}")

    async def main() -> Tuple[int, float, pxb.VolumeBackup]:
        count = 0
        backup = asyncio.ensure_future(loc.backup_volume_async(big_tree))
        started = time.monotonic()
        while not backup.done():
            await asyncio.sleep(0.01)
            count += 1
        return count, time.monotonic() - started, backup.result()

    count, elapsed, b = asyncio.run(main())
    assert b.files == 300
    assert elapsed > 0.1, "the backup was too quick to tell"
    assert count >= elapsed / 0.01 * 0.3, (count, elapsed)


def test_concurrent_async_calls_and_a_sync_call_in_a_thread(tmp_path: Path) -> None:
    trees = []
    for i in range(3):
        root = tmp_path / f"src{i}"
        make_tree(root, files=5, size=100_000, seed=10 + i)
        trees.append(root)
    loc = pxb.Location.open(f"file://{tmp_path / 'location'}")
    from_thread: List[pxb.VolumeBackup] = []
    thread = threading.Thread(target=lambda: from_thread.append(loc.backup_volume(trees[2], tag="thread")))

    async def main() -> List[pxb.VolumeBackup]:
        thread.start()
        return list(
            await asyncio.gather(
                loc.backup_volume_async(trees[0], tag="zero"),
                loc.backup_volume_async(trees[1], tag="one"),
            )
        )

    results = asyncio.run(main())
    thread.join()
    assert [r.tag for r in results] == ["zero", "one"]
    assert from_thread and from_thread[0].tag == "thread"
    assert len(loc.list_backups()) == 3
    assert loc.verify().ok
