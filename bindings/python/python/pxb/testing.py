"""``pxb.testing``: the fleet simulator, for testing automation without Gardener.

:class:`Fleet` serves a Gardener garden (projects, shoots, the ``adminkubeconfig`` subresource,
project-scoped service accounts) and one Kubernetes API server per shoot, over HTTPS on loopback,
in this process. It is the simulator pxb's own tests, benchmarks and ``pxb demo`` run on.

:func:`garden` is the short form: a context manager that serves a garden with ``shoots`` shoots
and yields its kubeconfig, for automation that only needs the garden credentials. :class:`Fleet`
also changes the fleet while it runs.

.. code-block:: python

    import pxb
    import pxb.testing

    with pxb.testing.garden(shoots=3, project="acme") as kubeconfig:
        provider = pxb.GardenerProvider(kubeconfig=kubeconfig, project="acme")
        assert len(provider.discover()) == 3

    with pxb.testing.Fleet(shoots=3, project="acme") as fleet:
        provider = pxb.GardenerProvider(kubeconfig=fleet.kubeconfig, project=fleet.project)
        assert len(provider.discover()) == 3
        fleet.add_shoot("old", kubernetes_version="1.29.8")   # discovered as ineligible
        fleet.hibernate("shoot-00000")
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from types import TracebackType
from typing import Dict, Iterator, Optional, Type

from pxb import _pxb

__all__ = ["Fleet", "garden"]


@contextlib.contextmanager
def garden(
    shoots: int = 0,
    project: str = "acme",
    *,
    prefix: str = "shoot",
    kubeconfig_min_seconds: int = 600,
) -> Iterator[str]:
    """Serves a simulated garden with project ``project`` holding ``shoots`` ready shoots named
    ``<prefix>-00000``, … (as :class:`Fleet`) and yields its garden kubeconfig (YAML text) of an
    admin service account of the project: what :class:`pxb.GardenerProvider` and pxb-server's
    garden credentials take. The garden and its shoots stop when the ``with`` block exits."""
    with Fleet(shoots, project, prefix=prefix, kubeconfig_min_seconds=kubeconfig_min_seconds) as fleet:
        yield fleet.kubeconfig


class Fleet:
    """A simulated garden with project ``project`` holding ``shoots`` ready shoots named
    ``<prefix>-00000``, ``<prefix>-00001``, … (Azure, Kubernetes 1.33.4, eligible).

    Use it as a context manager (it stops on exit) or call :meth:`close`. ``kubeconfig`` is the
    garden kubeconfig (YAML text) of an admin service account of the project, what
    :class:`pxb.GardenerProvider` and pxb-server's garden credentials take; ``kubeconfig_path``
    is the same written to a private temporary file (removed on close).
    ``kubeconfig_min_seconds`` is the shortest kubeconfig lifetime the garden grants (Gardener:
    600 s), lower to test expiry.
    """

    def __init__(
        self,
        shoots: int = 0,
        project: str = "acme",
        *,
        prefix: str = "shoot",
        kubeconfig_min_seconds: int = 600,
    ) -> None:
        self._sim = _pxb.SimFleet(
            project, shoots, prefix=prefix, kubeconfig_min_seconds=kubeconfig_min_seconds
        )
        self._path: Optional[str] = None

    # -- what a test hands to the code under test -----------------------------------------

    @property
    def project(self) -> str:
        """The project the fleet was started with."""
        return self._sim.project

    @property
    def kubeconfig(self) -> str:
        """The garden kubeconfig (YAML text) of an admin service account of :attr:`project`."""
        return self._sim.kubeconfig

    @property
    def kubeconfig_path(self) -> str:
        """:attr:`kubeconfig` in a temporary file readable only by this user (removed on close)."""
        if self._path is None:
            fd, path = tempfile.mkstemp(prefix="pxb-garden-", suffix=".yaml")
            with os.fdopen(fd, "w") as f:
                f.write(self.kubeconfig)
            self._path = path
        return self._path

    @property
    def garden_url(self) -> str:
        """The garden API's URL."""
        return self._sim.garden_url

    @property
    def garden_ca_pem(self) -> str:
        """The garden's CA certificate (PEM)."""
        return self._sim.garden_ca_pem

    @property
    def shoot_count(self) -> int:
        """Shoots across projects (every phase but deleted)."""
        return self._sim.shoot_count

    @property
    def closed(self) -> bool:
        """Whether the fleet was stopped."""
        return self._sim.closed

    # -- changing the fleet ---------------------------------------------------------------

    def add_project(self, name: str) -> str:
        """Adds a project; returns its namespace (``garden-<name>``)."""
        return self._sim.add_project(name)

    def service_account_kubeconfig(
        self, name: str = "automation", *, role: str = "admin", project: Optional[str] = None
    ) -> str:
        """A garden kubeconfig of a new service account of ``project`` with ``role`` ``admin``
        or ``viewer`` (a viewer may not request admin kubeconfigs)."""
        return self._sim.service_account_kubeconfig(name, role=role, project=project)

    def add_shoots(self, n: int, *, prefix: str = "shoot", project: Optional[str] = None) -> None:
        """Adds ``n`` ready shoots named ``<prefix>-00000``, …"""
        self._sim.add_shoots(n, prefix=prefix, project=project)

    def add_shoot(
        self,
        name: str,
        *,
        project: Optional[str] = None,
        kubernetes_version: str = "1.33.4",
        provider_type: str = "azure",
        region: str = "westeurope",
        labels: Optional[Dict[str, str]] = None,
        hibernated: bool = False,
        creating: bool = False,
        without_status: bool = False,
    ) -> str:
        """Adds a shoot; returns its API server's URL. Below Kubernetes 1.30, on a provider
        other than ``azure``, hibernated, still ``creating`` or ``without_status``, it is
        discovered as ineligible with that reason."""
        return self._sim.add_shoot(
            name,
            project=project,
            kubernetes_version=kubernetes_version,
            provider_type=provider_type,
            region=region,
            labels=labels,
            hibernated=hibernated,
            creating=creating,
            without_status=without_status,
        )

    def shoot_url(self, name: str, *, project: Optional[str] = None) -> str:
        """The URL of a shoot's API server."""
        return self._sim.shoot_url(name, project=project)

    def hibernate(self, name: str, *, project: Optional[str] = None) -> None:
        """Hibernates a shoot: its API goes down and it is discovered as hibernated."""
        self._sim.hibernate(name, project=project)

    def wake(self, name: str, *, project: Optional[str] = None) -> None:
        """Wakes a hibernated shoot."""
        self._sim.wake(name, project=project)

    def set_version(self, name: str, version: str, *, project: Optional[str] = None) -> None:
        """Changes a shoot's Kubernetes version."""
        self._sim.set_version(name, version, project=project)

    def finish_creation(self, name: str, *, project: Optional[str] = None) -> None:
        """Finishes creating a shoot added with ``creating=True``."""
        self._sim.finish_creation(name, project=project)

    def begin_deletion(self, name: str, *, project: Optional[str] = None) -> None:
        """Starts deleting a shoot (listed as being deleted until :meth:`delete_shoot`)."""
        self._sim.begin_deletion(name, project=project)

    def delete_shoot(self, name: str, *, project: Optional[str] = None) -> None:
        """Deletes a shoot: its API server stops and it leaves the garden."""
        self._sim.delete_shoot(name, project=project)

    def set_fault(
        self,
        name: str,
        fault: str,
        *,
        seconds: Optional[float] = None,
        status: Optional[int] = None,
        project: Optional[str] = None,
    ) -> None:
        """Injects a fault into a shoot's API server: ``none``, ``offline`` (connections hang),
        ``refused`` (port closed), ``latency`` (answers ``seconds`` late), ``flapping`` (healthy
        and refused in turn, ``seconds`` each) or ``http_error`` (every answer is ``status``)."""
        self._sim.set_fault(name, fault, seconds=seconds, status=status, project=project)

    def admin_kubeconfig(self, name: str, *, seconds: int = 3600, project: Optional[str] = None) -> str:
        """An admin kubeconfig of a shoot valid for ``seconds``, issued directly (not through
        the garden API)."""
        return self._sim.admin_kubeconfig(name, seconds=seconds, project=project)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the garden and every shoot and removes :attr:`kubeconfig_path` (idempotent)."""
        self._sim.close()
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"pxb.testing.Fleet(project={self.project!r}, garden_url={self.garden_url!r}, closed={self.closed})"
