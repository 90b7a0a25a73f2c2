"""The package's shape: what a provider imports, and what its objects say about themselves."""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
from pathlib import Path
from typing import Tuple

import pytest

import pxb


def test_every_public_class_names_the_public_package() -> None:
    classes = [getattr(pxb, name) for name in pxb.__all__ if inspect.isclass(getattr(pxb, name))]
    assert len(classes) > 20
    private = [c.__qualname__ for c in classes if c.__module__.startswith("pxb._pxb")]
    assert private == [], f"public classes that name the private module: {private}"
    assert {c.__module__ for c in classes} <= {"pxb", "pxb.client"}


def test_the_async_forms_are_coroutines(tmp_path: Path) -> None:
    loc = pxb.Location.open(f"file://{tmp_path}/loc")
    calls = {
        "check_async": loc.check_async(),
        "create_container_async": loc.create_container_async(),
        "backup_volume_async": loc.backup_volume_async(tmp_path),
        "list_backups_async": loc.list_backups_async(),
        "restore_volume_async": loc.restore_volume_async(target=tmp_path / "dst"),
        "verify_async": loc.verify_async(),
        "delete_backup_async": loc.delete_backup_async("20990101T000000Z-00000000"),
        "gc_async": loc.gc_async(True),
        "upgrade_async": loc.upgrade_async(),
    }
    # Made outside a running loop, and never awaited: closed unrun.
    for name, coro in calls.items():
        assert asyncio.iscoroutine(coro), name
        assert isinstance(coro, collections.abc.Coroutine), name
        coro.close()
    assert not (tmp_path / "dst").exists()
    assert [n for n in dir(pxb.Location) if n.endswith("_async")] == sorted(calls)


def test_asyncio_run_takes_an_async_form_directly(tmp_path: Path) -> None:
    loc = pxb.Location.open(f"file://{tmp_path}/loc")
    report = asyncio.run(loc.check_async())
    assert isinstance(report, pxb.CheckReport) and report.ok
    assert report.steps and all(s.ok for s in report.steps)
    assert asyncio.run(loc.list_backups_async()) == []


def test_an_async_form_called_inside_a_running_loop_works(tmp_path: Path) -> None:
    async def main() -> bool:
        loc = pxb.Location.open(f"file://{tmp_path}/loc")
        report = await loc.check_async()
        return report.ok

    assert asyncio.run(main()) is True


def test_create_task_takes_an_async_form(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a\n")
    loc = pxb.Location.open(f"file://{tmp_path}/loc")

    async def main() -> Tuple[pxb.CheckReport, pxb.VolumeBackup]:
        check = asyncio.create_task(loc.check_async())
        backup = asyncio.create_task(loc.backup_volume_async(tmp_path / "src", tag="t"))
        return await check, await backup

    report, backup = asyncio.run(main())
    assert report.ok
    assert backup.files == 1 and backup.tag == "t"
    assert [b.id for b in loc.list_backups()] == [backup.id]
    # A coroutine is awaited once.
    coro = loc.list_backups_async()
    assert [b.id for b in asyncio.run(coro)] == [backup.id]
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        asyncio.run(coro)
