"""``pxb.testing.Fleet``: the simulator serves a garden whose shoots ``pxb.GardenerProvider``
lists, changes at run time, and stops when the context manager exits."""

from __future__ import annotations

import os
import re
import socket
import time
from typing import List
from urllib.parse import urlparse

import pytest

import pxb
import pxb.testing


def names(fleet: pxb.testing.Fleet) -> List[str]:
    provider = pxb.GardenerProvider(kubeconfig=fleet.kubeconfig, project=fleet.project)
    return [c.name for c in provider.discover()]


def test_the_context_manager_serves_a_garden_with_n_shoots() -> None:
    with pxb.testing.Fleet(shoots=3, project="acme") as fleet:
        assert fleet.project == "acme"
        assert fleet.kubeconfig.startswith("apiVersion: v1")
        assert fleet.garden_url.startswith("https://127.0.0.1:")
        assert "BEGIN CERTIFICATE" in fleet.garden_ca_pem
        assert names(fleet) == ["shoot-00000", "shoot-00001", "shoot-00002"]
        assert fleet.shoot_count == 3
    assert fleet.closed
    # The garden is gone: nothing listens on its port any more (the simulator's runtime shuts
    # down in the background, so give it a moment).
    port = urlparse(fleet.garden_url).port
    assert port is not None
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "the garden still listens after close"
        time.sleep(0.1)


def test_garden_yields_a_kubeconfig_that_discovery_runs_on_and_stops_on_exit() -> None:
    assert "garden" in pxb.testing.__all__
    with pxb.testing.garden(shoots=3, project="dev", prefix="node") as kubeconfig:
        assert isinstance(kubeconfig, str) and kubeconfig.startswith("apiVersion: v1")
        provider = pxb.GardenerProvider(kubeconfig=kubeconfig, project="dev")
        clusters = provider.discover()
        assert [c.name for c in clusters] == ["node-00000", "node-00001", "node-00002"]
        assert all(c.eligible for c in clusters), clusters
        access = provider.access(clusters[0])
        assert access.cluster == "node-00000" and not access.expired
        servers = re.findall(r"server: (https://\S+)", kubeconfig)
        assert len(servers) == 1, kubeconfig
        port = urlparse(servers[0]).port
        assert port is not None
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # The garden stopped with the block.
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            break
        except ConnectionResetError:  # accepted while it shuts down
            pass
        assert time.monotonic() < deadline, "the garden still listens after the block"
        time.sleep(0.1)
    with pytest.raises(pxb.PxbError):
        pxb.GardenerProvider(kubeconfig=kubeconfig, project="dev", request_timeout=5).discover()


def test_garden_stops_when_the_block_raises() -> None:
    with pytest.raises(KeyError):
        with pxb.testing.garden(shoots=1) as kubeconfig:
            port = urlparse(re.findall(r"server: (https://\S+)", kubeconfig)[0]).port
            raise KeyError("boom")
    assert port is not None
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            break
        except ConnectionResetError:  # accepted while it shuts down
            pass
        assert time.monotonic() < deadline, "the garden still listens after the block raised"
        time.sleep(0.1)


def test_shoots_and_projects_can_be_added_while_it_runs() -> None:
    with pxb.testing.Fleet(shoots=1, project="dev", prefix="node") as fleet:
        fleet.add_shoots(2, prefix="more")
        url = fleet.add_shoot("labelled", labels={"tier": "gold"}, region="northeurope")
        assert url == fleet.shoot_url("labelled")
        assert names(fleet) == ["labelled", "more-00000", "more-00001", "node-00000"]
        provider = pxb.GardenerProvider(kubeconfig=fleet.kubeconfig, project="dev")
        labelled = [c for c in provider.discover() if c.name == "labelled"][0]
        assert labelled.labels["tier"] == "gold"
        assert labelled.region == "northeurope"

        assert fleet.add_project("second") == "garden-second"
        fleet.add_shoots(2, project="second")
        second = fleet.service_account_kubeconfig("ci", project="second")
        provider = pxb.GardenerProvider(kubeconfig=second, project="second")
        assert [c.name for c in provider.discover()] == ["shoot-00000", "shoot-00001"]
        assert fleet.shoot_count == 6


def test_the_kubeconfig_path_is_a_private_file_removed_on_close() -> None:
    with pxb.testing.Fleet(shoots=2) as fleet:
        path = fleet.kubeconfig_path
        assert os.stat(path).st_mode & 0o077 == 0
        with open(path) as f:
            assert f.read() == fleet.kubeconfig
        provider = pxb.GardenerProvider(kubeconfig=path, project=fleet.project)
        assert len(provider.discover()) == 2
    assert not os.path.exists(path)


def test_a_refused_fault_closes_the_shoots_port_and_none_reopens_it() -> None:
    with pxb.testing.Fleet(shoots=1) as fleet:
        port = urlparse(fleet.shoot_url("shoot-00000")).port
        assert port is not None
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        fleet.set_fault("shoot-00000", "refused")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        fleet.set_fault("shoot-00000", "none")
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_mistakes_are_errors_of_the_right_kind() -> None:
    with pxb.testing.Fleet(shoots=1) as fleet:
        with pytest.raises(pxb.NotFound, match="no shoot acme/missing"):
            fleet.hibernate("missing")
        with pytest.raises(pxb.NotFound, match="no project nowhere"):
            fleet.add_shoots(1, project="nowhere")
        with pytest.raises(pxb.Invalid, match="is not none, offline"):
            fleet.set_fault("shoot-00000", "meltdown")
        with pytest.raises(pxb.Invalid, match="needs seconds"):
            fleet.set_fault("shoot-00000", "latency")
        with pytest.raises(pxb.Invalid, match="not admin or viewer"):
            fleet.service_account_kubeconfig(role="owner")
    fleet.close()  # idempotent
    with pytest.raises(pxb.PxbError, match="closed"):
        fleet.add_shoots(1)
