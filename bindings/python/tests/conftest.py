"""Fixtures of the pytest suite: the real parts the Rust tests use, served by ``pxb-fixture``.

``pxb-fixture`` (``tests/src/bin/pxb-fixture.rs`` in the workspace) starts them, prints one JSON
line describing them, and stays up until its stdin closes. Each fixture here starts it with a pipe
on stdin, reads that line (at most ``STARTUP_TIMEOUT`` seconds; a failure raises with the
fixture's stderr), yields the description as a dict, and on teardown closes the pipe and waits
for a clean exit (killing the process by its pid after ``STOP_TIMEOUT`` seconds). If pytest dies,
the pipe closes with it and the fixture stops by itself.

- ``azure``: test CA, Azurite over HTTPS, the Entra ID stand-in, a projected token file (keys: see
  ``AzureDescription`` in ``tests/src/external.rs``).
- ``control_plane``: a simulated garden with 3 shoots in project ``acme``, an agent on each, the
  real ``pxb-server`` with the OIDC test issuer, Azurite (keys: ``ControlPlaneDescription``).
- ``start_fixture``: ``start_fixture("control-plane", "--project", "x")`` starts one more
  instance (for a test that needs a server of its own) and returns its description; it stops at
  the end of the session.

The binary is ``$PXB_FIXTURE`` or ``<repo>/target/debug/pxb-fixture``
(``cargo build -p pxb-tests --bin pxb-fixture``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0


def fixture_binary() -> str:
    """The ``pxb-fixture`` executable to run."""
    return os.environ.get("PXB_FIXTURE") or str(REPO / "target" / "debug" / "pxb-fixture")


class FixtureProcess:
    """One running ``pxb-fixture`` and its description."""

    def __init__(self, *args: str) -> None:
        self.args = [fixture_binary(), *args]
        if not os.access(self.args[0], os.X_OK):
            raise RuntimeError(
                f"{self.args[0]} is missing: build it with "
                "`cargo build -p pxb-tests --bin pxb-fixture` or set PXB_FIXTURE"
            )
        # stderr goes to a file: nobody has to drain it, and it is there to show on failure.
        self.stderr = tempfile.TemporaryFile(mode="w+b", prefix="pxb-fixture-stderr-")
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=str(REPO),
        )
        self.description = self._read_description()

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def _fail(self, why: str) -> RuntimeError:
        self._kill()
        return RuntimeError(
            f"{' '.join(self.args)}: {why} (exit code {self.proc.returncode}); "
            f"its stderr:\n{self.stderr_text()}"
        )

    def _read_description(self) -> Dict[str, Any]:
        line: List[bytes] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(STARTUP_TIMEOUT)
        if reader.is_alive():
            raise self._fail(f"no description within {STARTUP_TIMEOUT:.0f} s")
        if not line or not line[0]:
            self.proc.wait(STOP_TIMEOUT)
            raise self._fail("exited before it was ready")
        try:
            description = json.loads(line[0])
        except ValueError as e:
            raise self._fail(f"its ready line is not JSON ({e}): {line[0]!r}") from None
        if not isinstance(description, dict):
            raise self._fail(f"its ready line is not a JSON object: {line[0]!r}")
        return description

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL to self.proc.pid
            self.proc.wait()

    def stop(self) -> None:
        """Closes stdin and waits for a clean exit; raises if it was not one."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise self._fail(f"did not stop within {STOP_TIMEOUT:.0f} s of its stdin closing") from None
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if code != 0:
            raise self._fail("did not stop cleanly")
        self.stderr.close()


def _serve(*args: str) -> Iterator[Dict[str, Any]]:
    fixture = FixtureProcess(*args)
    try:
        yield fixture.description
    finally:
        fixture.stop()


@pytest.fixture(scope="session")
def azure() -> Iterator[Dict[str, Any]]:
    """``pxb-fixture azure``: Azurite over HTTPS, the Entra ID stand-in, a token file, the CA."""
    yield from _serve("azure")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[Dict[str, Any]]:
    """``pxb-fixture control-plane``: 3 shoots in project ``acme`` with agents, pxb-server."""
    yield from _serve("control-plane", "--shoots", "3", "--project", "acme")


@pytest.fixture(scope="session")
def start_fixture() -> Iterator[Callable[..., Dict[str, Any]]]:
    """Starts further ``pxb-fixture`` instances (arguments as on its command line); each stops
    at the end of the session."""
    started: List[FixtureProcess] = []

    def start(*args: str) -> Dict[str, Any]:
        fixture = FixtureProcess(*args)
        started.append(fixture)
        return fixture.description

    yield start
    errors: List[RuntimeError] = []
    for fixture in started:
        try:
            fixture.stop()
        except RuntimeError as e:
            errors.append(e)
    if errors:
        raise RuntimeError("; ".join(str(e) for e in errors))
