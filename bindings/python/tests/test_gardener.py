"""``pxb.GardenerProvider`` against the fleet simulator: discovery with eligibility and reasons,
short-lived access whose kubeconfig the shoot's API server accepts, the async twins, and the
errors of the garden mapped onto ``pxb``'s exceptions."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import pathlib
import ssl
import tempfile
import urllib.request
from typing import Any, Dict, Iterator

import pytest

import pxb
import pxb.testing


@pytest.fixture(scope="module")
def fleet() -> Iterator[pxb.testing.Fleet]:
    with pxb.testing.Fleet(shoots=2, project="acme") as f:
        f.add_shoot("old", kubernetes_version="1.29.8")
        f.add_shoot("aws", provider_type="aws")
        f.add_shoot("sleepy", hibernated=True)
        f.add_shoot("new", creating=True)
        f.add_shoot("bare", without_status=True)
        f.add_shoot("going")
        f.begin_deletion("going")
        yield f


@pytest.fixture()
def provider(fleet: pxb.testing.Fleet) -> pxb.GardenerProvider:
    return pxb.GardenerProvider(kubeconfig=fleet.kubeconfig, project=fleet.project, expiration_seconds=900)


def get_json(access: pxb.ClusterAccess, path: str) -> Dict[str, Any]:
    """GET `path` on the access's API server with its CA and client certificate (files only for
    the duration of the request: Python's ssl module reads certificates from files)."""
    ctx = ssl.create_default_context(cadata=access.ca_pem)
    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        with open(cert, "w") as f:
            f.write(access.client_cert_pem)
        with open(key, "w") as f:
            f.write(access.client_key_pem)
        ctx.load_cert_chain(cert, key)
    with urllib.request.urlopen(access.server + path, context=ctx, timeout=10) as resp:
        assert resp.status == 200
        answer: Dict[str, Any] = json.loads(resp.read())
        return answer


def test_discover_classifies_every_shoot_with_its_reason(provider: pxb.GardenerProvider) -> None:
    clusters = {c.name: c for c in provider.discover()}
    assert sorted(clusters) == ["aws", "bare", "going", "new", "old", "shoot-00000", "shoot-00001", "sleepy"]
    reasons = {name: c.reason for name, c in clusters.items()}
    assert reasons == {
        "shoot-00000": None,
        "shoot-00001": None,
        "old": "kubernetesVersion",
        "aws": "providerType",
        "sleepy": "hibernated",
        "new": "notReconciled",
        "bare": "malformed",
        "going": "deleting",
    }
    ok = clusters["shoot-00000"]
    assert ok.eligible and ok.message is None
    assert (ok.namespace, ok.provider_type, ok.kubernetes_version, ok.region) == (
        "garden-acme",
        "azure",
        "1.33.4",
        "westeurope",
    )
    assert len(ok.id) == 36  # the shoot's uid
    old = clusters["old"]
    assert not old.eligible
    assert old.message == "Kubernetes 1.29.8 is below the supported 1.30"
    assert "eligible=False" in repr(old) and "kubernetesVersion" in repr(old)
    assert clusters["aws"].message == "provider type aws is not azure"


def test_discovery_follows_changes_of_the_fleet(fleet: pxb.testing.Fleet, provider: pxb.GardenerProvider) -> None:
    fleet.add_shoot("moving")
    assert {c.name: c.eligible for c in provider.discover()}["moving"] is True
    fleet.hibernate("moving")
    moving = {c.name: c for c in provider.discover()}["moving"]
    assert (moving.eligible, moving.reason) == (False, "hibernated")
    fleet.wake("moving")
    fleet.set_version("moving", "1.28.1")
    moving = {c.name: c for c in provider.discover()}["moving"]
    assert (moving.eligible, moving.reason) == (False, "kubernetesVersion")
    fleet.delete_shoot("moving")
    assert "moving" not in [c.name for c in provider.discover()]


def test_access_gives_a_kubeconfig_the_api_server_accepts(provider: pxb.GardenerProvider) -> None:
    shoot = [c for c in provider.discover() if c.name == "shoot-00000"][0]
    access = provider.access(shoot)
    assert access.cluster == "shoot-00000"
    assert access.server.startswith("https://127.0.0.1:")
    version = get_json(access, "/version")
    assert version["gitVersion"] == "v1.33.4"
    namespaces = get_json(access, "/api/v1/namespaces")
    assert "default" in [n["metadata"]["name"] for n in namespaces["items"]]

    # The kubeconfig carries the same credentials.
    kc = access.kubeconfig
    assert f'server: "{access.server}"' in kc
    data = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
        for line in kc.splitlines()
        if line.strip().endswith("=") or "-data:" in line
    }
    assert base64.b64decode(data["certificate-authority-data"]).decode() == access.ca_pem
    assert base64.b64decode(data["client-certificate-data"]).decode() == access.client_cert_pem
    assert base64.b64decode(data["client-key-data"]).decode() == access.client_key_pem


def test_access_is_short_lived_and_its_repr_hides_the_secrets(provider: pxb.GardenerProvider) -> None:
    access = provider.access("shoot-00001")
    now = datetime.datetime.now(datetime.timezone.utc)
    assert access.expires_at.tzinfo is not None
    assert now < access.expires_at <= now + datetime.timedelta(seconds=901)
    assert access.issued_at <= now + datetime.timedelta(seconds=1)
    assert 800 < access.expires_in <= 900
    assert not access.expired
    shown = repr(access)
    assert "shoot-00001" in shown and access.server in shown and "redacted" in shown
    key_body = "".join(access.client_key_pem.strip().splitlines()[1:-1])
    for secret in (key_body[:40], "PRIVATE KEY", "BEGIN CERTIFICATE", "client-key-data"):
        assert secret not in shown
    assert "acme" in repr(provider) and "token" not in repr(provider)


def test_access_by_cluster_id_or_name_is_the_same_credential(provider: pxb.GardenerProvider) -> None:
    shoot = [c for c in provider.discover() if c.name == "shoot-00000"][0]
    by_cluster = provider.access(shoot)
    by_id = provider.access(shoot.id)
    by_name = provider.access("shoot-00000")
    assert by_cluster.client_cert_pem == by_id.client_cert_pem == by_name.client_cert_pem


def test_access_to_a_fresh_provider_discovers_first(fleet: pxb.testing.Fleet) -> None:
    fresh = pxb.GardenerProvider(kubeconfig=fleet.kubeconfig, project="acme")
    assert get_json(fresh.access("shoot-00001"), "/version")["gitVersion"] == "v1.33.4"


def test_access_to_an_ineligible_or_unknown_cluster_fails(provider: pxb.GardenerProvider) -> None:
    with pytest.raises(pxb.Precondition, match="shoot old is not eligible: Kubernetes 1.29.8"):
        provider.access("old")
    with pytest.raises(pxb.NotFound, match="no cluster missing in project acme"):
        provider.access("missing")
    with pytest.raises(pxb.Invalid):
        provider.access(42)  # type: ignore[arg-type]


def test_the_kubeconfig_may_be_a_path_or_the_text(fleet: pxb.testing.Fleet) -> None:
    as_str = pxb.GardenerProvider(kubeconfig=fleet.kubeconfig_path, project="acme")
    as_path = pxb.GardenerProvider(kubeconfig=pathlib.Path(fleet.kubeconfig_path), project="acme")
    as_text = pxb.GardenerProvider(kubeconfig=fleet.kubeconfig, project="acme")
    assert [c.id for c in as_str.discover()] == [c.id for c in as_path.discover()] == [
        c.id for c in as_text.discover()
    ]
    assert as_text.project == "acme"
    with pytest.raises(pxb.IoError, match="reading the garden kubeconfig /nonexistent/kubeconfig"):
        pxb.GardenerProvider(kubeconfig="/nonexistent/kubeconfig", project="acme")
    with pytest.raises(pxb.Invalid, match="the garden kubeconfig is not valid"):
        pxb.GardenerProvider(kubeconfig="not: [a kubeconfig\n", project="acme")


def test_garden_errors_map_onto_pxb_errors(fleet: pxb.testing.Fleet) -> None:
    fleet.add_project("other")
    elsewhere = pxb.GardenerProvider(kubeconfig=fleet.kubeconfig, project="other")
    with pytest.raises(pxb.PermissionDenied, match="reading project other: projects is forbidden"):
        elsewhere.discover()
    revoked = fleet.kubeconfig.replace("token: ", "token: not-")
    with pytest.raises(pxb.Unauthenticated, match="reading project acme: Unauthorized"):
        pxb.GardenerProvider(kubeconfig=revoked, project="acme").discover()
    viewer = fleet.service_account_kubeconfig("reader", role="viewer")
    as_viewer = pxb.GardenerProvider(kubeconfig=viewer, project="acme")
    assert len(as_viewer.discover()) >= 8
    with pytest.raises(pxb.PermissionDenied, match="cannot create resource \"shoots/adminkubeconfig\""):
        as_viewer.access("shoot-00000")


def test_the_async_twins_run_concurrently_under_asyncio(provider: pxb.GardenerProvider) -> None:
    async def main() -> None:
        clusters = await provider.discover_async()
        eligible = [c for c in clusters if c.eligible]
        assert [c.name for c in eligible] == ["shoot-00000", "shoot-00001"]
        accesses = await asyncio.gather(*(provider.access_async(c) for c in eligible))
        assert [a.cluster for a in accesses] == ["shoot-00000", "shoot-00001"]
        assert all(not a.expired for a in accesses)
        with pytest.raises(pxb.Precondition):
            await provider.access_async("sleepy")

    asyncio.run(main())
    # The answers of the async calls work like the sync ones.
    assert get_json(provider.access("shoot-00001"), "/version")["major"] == "1"


def test_the_async_twins_are_coroutines_that_asyncio_run_takes(provider: pxb.GardenerProvider) -> None:
    discover = provider.discover_async()
    access = provider.access_async("shoot-00000")
    assert asyncio.iscoroutine(discover) and asyncio.iscoroutine(access)
    clusters = asyncio.run(discover)
    assert "shoot-00000" in [c.name for c in clusters]
    assert asyncio.run(access).cluster == "shoot-00000"
    # An invalid argument is raised where the coroutine is awaited, as by an `async def`.
    bad = provider.access_async(42)  # type: ignore[arg-type]
    assert asyncio.iscoroutine(bad)
    with pytest.raises(pxb.Invalid, match="cluster must be"):
        asyncio.run(bad)
