"""``pxb.Client`` against a real pxb-server (``control_plane``: a simulated garden with agents on
its shoots, Azurite with Workload Identity): a tenant onboarded end to end, lists as lazy
iterators, the error hierarchy by API code, and the async twins."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TypeVar

import pytest

import pxb
from pxb import _pxb
from pxb import models as m

T = TypeVar("T")


def wait_for(what: str, fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 120.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:.0f} s; last: {value!r}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cp(control_plane: Dict[str, Any]) -> Dict[str, Any]:
    return control_plane


@pytest.fixture(scope="module")
def admin(cp: Dict[str, Any]) -> pxb.Client:
    return pxb.Client(cp["url"], token=cp["admin_token"])


@pytest.fixture(scope="module")
def tenant(cp: Dict[str, Any], admin: pxb.Client) -> Dict[str, Any]:
    """The org of the control plane onboarded: access bindings, discovery, a location, and all
    shoots discovered and validated. Returns the clients and what was made."""
    org = cp["org"]
    view = admin.create_org(
        m.CreateOrg(
            id=org,
            display_name="Acme Corp",
            access=[
                m.RoleBindingInput(role="admin", groups=["acme-admins"]),
                m.RoleBindingInput(role="viewer", groups=["acme-viewers"]),
            ],
        )
    )
    owner = admin.with_token(cp["tokens"]["acme-admin"])
    discovery = owner.create_discovery(
        org, m.CreateDiscovery(id="garden", project=cp["project"], credential=cp["credential"], interval_secs=5)
    )
    fleet = wait_for(
        "every shoot in the fleet status",
        lambda: admin.fleet_status(org=org),
        lambda f: len(f.items) == len(cp["shoots"]),
    )
    location = owner.create_location(
        org,
        m.CreateLocation(
            name="primary",
            provider="azure",
            account=cp["account"],
            container=cp["container"],
            endpoint=cp["blob_endpoint"],
            client_id=cp["client_id"],
            tenant_id=cp["tenant_id"],
            clusters=m.ClusterSelectorInput(all=True),
        ),
    )
    statuses = wait_for(
        "the location valid on every cluster",
        lambda: list(owner.location_status(org, "primary")),
        lambda s: len(s) == len(cp["shoots"]) and all(x.validation.phase == "Valid" for x in s),
    )
    return {
        "org": org,
        "view": view,
        "owner": owner,
        "discovery": discovery,
        "fleet": fleet,
        "location": location,
        "statuses": statuses,
    }


def test_the_client_has_every_method_of_the_rust_client_with_an_async_twin() -> None:
    methods = _pxb.ApiClient.methods()
    spec = json.loads((Path(__file__).resolve().parents[3] / "docs" / "openapi.json").read_text())
    operations = [op for path in spec["paths"].values() for op in path.values()]
    assert len(methods) == len(set(methods)) == len(operations)
    for name in methods:
        assert callable(getattr(pxb.Client, name)), name
        assert callable(getattr(pxb.Client, name + "_async")), name


def test_onboarding_makes_typed_objects(cp: Dict[str, Any], admin: pxb.Client, tenant: Dict[str, Any]) -> None:
    org = tenant["org"]
    view = tenant["view"]
    assert isinstance(view, m.OrgView)
    assert (view.id, view.display_name, view.mode, view.state) == (org, "Acme Corp", "federated", "Ready")
    assert view.access == [
        m.RoleBinding(role="admin", groups=["acme-admins"], app_roles=[]),
        m.RoleBinding(role="viewer", groups=["acme-viewers"], app_roles=[]),
    ]
    assert admin.get_org(org) == view
    assert org in [o.id for o in admin.list_orgs()]

    d = tenant["discovery"]
    assert isinstance(d, m.DiscoveryView)
    assert (d.org, d.id, d.project, d.credential, d.interval_secs) == (org, "garden", cp["project"], cp["credential"], 5)
    owner = tenant["owner"]
    assert [x.id for x in owner.list_discoveries(org)] == ["garden"]
    assert owner.get_discovery(org, "garden").status.shoots == len(cp["shoots"])

    fleet = tenant["fleet"]
    assert isinstance(fleet, m.FleetStatusView)
    assert sorted(e.cluster for e in fleet.items) == sorted(cp["shoots"])
    assert all(isinstance(e, m.FleetEntry) and e.org == org for e in fleet.items)
    assert sum(fleet.counts.values()) == len(cp["shoots"])

    clusters = owner.list_clusters(org, page_size=2)
    records = list(clusters)
    assert clusters.pages == 2
    assert sorted(c.name for c in records) == sorted(cp["shoots"])
    assert all(isinstance(c, m.ClusterRecord) and c.source == "gardener" for c in records)
    assert owner.get_cluster(org, records[0].name) == records[0] or owner.get_cluster(org, records[0].name).id == records[0].id

    loc = tenant["location"]
    assert isinstance(loc, m.LocationView)
    assert (loc.name, loc.provider, loc.mode, loc.clusters.all) == ("primary", "azure", "federated", True)
    statuses = tenant["statuses"]
    assert sorted(s.cluster_name for s in statuses) == sorted(cp["shoots"])
    assert all(isinstance(s, m.LocationStatus) and s.validation.phase == "Valid" for s in statuses)
    one = list(owner.location_status(org, "primary", cluster=statuses[0].cluster))
    assert [s.id for s in one] == [statuses[0].id]
    assert [x.name for x in owner.list_locations(org)] == ["primary"]


def test_the_fleet_becomes_ready(admin: pxb.Client, tenant: Dict[str, Any], cp: Dict[str, Any]) -> None:
    org = tenant["org"]
    fleet = wait_for(
        "every cluster Ready with its location valid in the fleet snapshot",
        lambda: admin.fleet_status(org=org),
        # The snapshot is rebuilt in the background, so it may trail the location statuses the
        # fixture waited for by one rebuild.
        lambda f: f.counts.get("Ready") == len(cp["shoots"]) and all(e.locations.valid == 1 for e in f.items),
    )
    assert len(fleet.items) == len(cp["shoots"])
    assert all(e.state == "Ready" and e.locations.valid == 1 and e.locations.invalid == 0 for e in fleet.items)
    first = admin.fleet_status(org=org, limit=1)
    assert len(first.items) == 1 and first.next is not None
    entries = admin.fleet_entries(org=org, page_size=1)
    assert [e.id for e in entries] == [e.id for e in fleet.items]
    assert entries.pages == len(cp["shoots"])


def test_backups_are_listed_lazily_page_by_page(tenant: Dict[str, Any], cp: Dict[str, Any]) -> None:
    org, owner = tenant["org"], tenant["owner"]
    made = owner.create_backups(
        org, m.BackupRequest(clusters=m.ClusterSelectorInput(all=True), namespaces=["default"], location="primary")
    )
    assert len(made) == len(cp["shoots"])
    assert all(isinstance(b, m.BackupRecord) and b.namespaces == ["default"] for b in made)
    ids = {b.id for b in made}

    final = [
        wait_for(
            f"backup {b.id} final",
            lambda b=b: owner.get_backup(org, b.id),  # type: ignore[misc]
            lambda r: r.phase not in ("Pending", "InProgress"),
        )
        for b in made
    ]
    assert {b.phase for b in final} == {"Success"}, [(b.id, b.phase, b.message) for b in final]

    backups = owner.list_backups(org, page_size=2)
    assert backups.pages == 0  # nothing fetched before iterating
    first = next(backups)
    assert backups.pages == 1 and backups.next_cursor is not None
    rest = list(backups)
    assert backups.pages == 2 and backups.next_cursor is None
    assert {first.id, *(b.id for b in rest)} == ids

    one_cluster = list(owner.list_backups(org, cluster=made[0].cluster, page_size=1))
    assert [b.id for b in one_cluster] == [made[0].id]
    assert list(owner.list_backups(org, location="primary", state="Success", namespace="default")) != []
    assert list(owner.list_backups(org, namespace="nothing-here")) == []

    restore = owner.create_restore(org, m.RestoreRequest(backup=made[1].id, namespace_mapping={"default": "copy"}))
    assert isinstance(restore, m.RestoreRecord) and restore.backup == made[1].id
    done = wait_for(
        f"restore {restore.id} final",
        lambda: owner.get_restore(org, restore.id),
        lambda r: r.phase not in ("Pending", "InProgress"),
    )
    assert done.phase == "Success", (done.phase, done.message)
    assert done.namespace_mapping == {"default": "copy"}
    assert [r.id for r in owner.list_restores(org, page_size=1)] == [restore.id]

    gone = owner.delete_backup(org, made[0].id)
    assert isinstance(gone, m.DeleteOutcome)
    assert gone.backup.id == made[0].id and gone.data_remains is False


def test_schedules_are_made_listed_paused_and_deleted(tenant: Dict[str, Any]) -> None:
    org, owner = tenant["org"], tenant["owner"]
    made = owner.create_schedule(
        org,
        m.ScheduleRequest(
            name="nightly",
            policy=m.SchedulePolicyInput(kind="daily", at="02:00", retain=7, time_zone="Europe/Berlin"),
            clusters=m.ClusterSelectorInput(all=True),
            namespaces=["default"],
            location="primary",
        ),
    )
    assert isinstance(made, m.ScheduleRecord)
    assert (made.id, made.policy.kind, made.policy.at, made.policy.retain) == ("nightly", "daily", "02:00", 7)
    assert made.policy.time_zone == "Europe/Berlin" and made.paused is False
    assert [s.id for s in owner.list_schedules(org)] == ["nightly"]
    paused = owner.update_schedule(org, "nightly", m.UpdateSchedule(paused=True))
    assert paused.paused is True
    assert owner.get_schedule(org, "nightly").paused is True
    owner.delete_schedule(org, "nightly")
    assert list(owner.list_schedules(org)) == []
    with pytest.raises(pxb.NotFound) as e:
        owner.get_schedule(org, "nightly")
    assert e.value.status == 404 and e.value.code == "not_found"  # type: ignore[attr-defined]


def test_errors_follow_the_api_codes_with_the_clis_messages(cp: Dict[str, Any], tenant: Dict[str, Any]) -> None:
    org = tenant["org"]
    stranger = pxb.Client(cp["url"], token=cp["tokens"]["globex-admin"])
    with pytest.raises(pxb.PermissionDenied) as denied:
        stranger.create_location(
            org, m.CreateLocation(name="mine", provider="file", container="/tmp/x", clusters=m.ClusterSelectorInput())
        )
    assert denied.value.status == 403 and denied.value.code == "forbidden"  # type: ignore[attr-defined]
    assert str(denied.value).endswith("(403)")
    viewer = pxb.Client(cp["url"], token=cp["tokens"]["acme-viewer"])
    assert viewer.get_org(org).id == org
    with pytest.raises(pxb.PermissionDenied):
        viewer.delete_location(org, "primary")

    nobody = pxb.Client(cp["url"], token="not-a-token")
    with pytest.raises(pxb.Unauthenticated) as unauth:
        nobody.whoami()
    assert unauth.value.status == 401 and unauth.value.code == "unauthenticated"  # type: ignore[attr-defined]
    assert str(unauth.value).endswith("(401)")
    with pytest.raises(pxb.Unauthenticated):
        list(pxb.Client(cp["url"]).list_orgs())

    owner = tenant["owner"]
    with pytest.raises(pxb.NotFound, match=r"\(404\)$"):
        owner.get_backup(org, "no-such-backup")
    with pytest.raises(pxb.AlreadyExists) as exists:
        owner.create_discovery(org, m.CreateDiscovery(id="garden", project=cp["project"], credential=cp["credential"]))
    assert exists.value.code == "already_exists"  # type: ignore[attr-defined]

    # Refused before anything is sent: a body the Rust type does not take, a bad name.
    with pytest.raises(pxb.Invalid, match="the body is not valid"):
        owner.create_org({"id": "x", "surprise": True})
    with pytest.raises(pxb.Invalid, match="is not a name"):
        owner.get_backup(org, "..")
    with pytest.raises(TypeError):
        owner.create_org(42)

    down = pxb.Client("http://127.0.0.1:9", token="t", timeout=5)
    with pytest.raises(pxb.Unavailable, match="cannot reach http://127.0.0.1:9/v1/whoami") as unreachable:
        down.whoami()
    assert unreachable.value.status is None  # type: ignore[attr-defined]
    with pytest.raises(pxb.Invalid, match="is not a URL"):
        pxb.Client("pxb.example.net")
    assert "not-a-token" not in repr(nobody) and cp["url"] in repr(nobody)


def test_the_async_twins(cp: Dict[str, Any], admin: pxb.Client, tenant: Dict[str, Any]) -> None:
    org, owner = tenant["org"], tenant["owner"]

    async def main() -> None:
        who, view, loc = await asyncio.gather(
            owner.whoami_async(), owner.get_org_async(org), owner.get_location_async(org, "primary")
        )
        assert who.orgs == {org: "admin"} and who.provider_admin is False
        assert view.id == org and loc.name == "primary"
        seen: List[str] = []
        pages = owner.list_backups_async(org, page_size=1)
        async for b in pages:
            assert isinstance(b, m.BackupRecord)
            seen.append(b.id)
        assert seen == [b.id for b in owner.list_backups(org)]
        assert pages.pages >= len(seen)
        statuses = [s async for s in owner.location_status_async(org, "primary")]
        assert len(statuses) == len(cp["shoots"])
        fleet = await admin.fleet_status_async(org=org)
        assert len(fleet.items) == len(cp["shoots"])
        schedule = await owner.create_schedule_async(
            org,
            m.ScheduleRequest(
                name="hourly",
                policy=m.SchedulePolicyInput(kind="interval", minutes=60, retain=2),
                clusters=m.ClusterSelectorInput(names=[cp["shoots"][0]]),
                namespaces=["default"],
                location="primary",
                paused=True,
            ),
        )
        assert schedule.policy.minutes == 60 and schedule.clusters.names == [cp["shoots"][0]]
        await owner.delete_schedule_async(org, "hourly")
        with pytest.raises(pxb.NotFound):
            await owner.get_schedule_async(org, "hourly")
        with pytest.raises(pxb.Unauthenticated):
            await pxb.Client(cp["url"], token="nope").whoami_async()

    asyncio.run(main())


def test_an_async_call_is_cancelled_with_its_task() -> None:
    # A server that takes connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    slow = pxb.Client(f"http://127.0.0.1:{silent.getsockname()[1]}", token="t", timeout=30)

    async def main() -> Optional[BaseException]:
        task = asyncio.ensure_future(slow.whoami_async())
        await asyncio.sleep(0.2)
        task.cancel()
        try:
            await asyncio.wait_for(task, 5)
        except BaseException as e:  # noqa: BLE001
            return e
        return None

    started = time.monotonic()
    try:
        assert isinstance(asyncio.run(main()), asyncio.CancelledError)
        assert time.monotonic() - started < 5
    finally:
        silent.close()
