"""The package's shape: what a provider imports, and what its objects say about themselves."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

import pxb


def test_every_public_class_names_the_public_package() -> None:
    classes = [getattr(pxb, name) for name in pxb.__all__ if inspect.isclass(getattr(pxb, name))]
    assert len(classes) > 20
    private = [c.__qualname__ for c in classes if c.__module__.startswith("pxb._pxb")]
    assert private == [], f"public classes that name the private module: {private}"
    assert {c.__module__ for c in classes} <= {"pxb", "pxb.client"}


def test_an_async_form_called_outside_a_running_loop_says_so(tmp_path: Path) -> None:
    loc = pxb.Location.open(f"file://{tmp_path}/loc")
    with pytest.raises(RuntimeError, match="no running event loop"):
        loc.check_async()


def test_an_async_form_called_inside_a_running_loop_works(tmp_path: Path) -> None:
    async def main() -> bool:
        loc = pxb.Location.open(f"file://{tmp_path}/loc")
        report = await loc.check_async()
        return report.ok

    assert asyncio.run(main()) is True
