"""The engine on ``azblob://`` locations in Azurite (over HTTPS with the test CA): Workload
Identity through the Entra ID stand-in, shared key and SAS round trips, and a refused identity.

The ``azure`` fixture (conftest.py) runs ``pxb-fixture azure`` and yields its description."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any, Dict

import pytest

import pxb

UNKNOWN_CLIENT_ID = "0badc0de-0000-4000-8000-000000000000"


def make_tree(root: Path, files: int = 8, size: int = 200_000, seed: int = 0) -> Dict[str, bytes]:
    rng = random.Random(seed)
    content: Dict[str, bytes] = {}
    for i in range(files):
        rel = f"d{i % 2}/f{i}.bin"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size + i)
        (root / rel).write_bytes(data)
        content[rel] = data
    return content


def read_tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def url(azure: Dict[str, Any], name: str, prefix: str = "") -> str:
    container = f"{azure['container_prefix']}-{name}"
    return f"azblob://{container}/{prefix}" if prefix else f"azblob://{container}"


def with_key(azure: Dict[str, Any], location: str) -> pxb.Location:
    """The location with the account key (as an administrator would create it)."""
    return pxb.Location.open(
        location,
        account=azure["account"],
        endpoint=azure["blob_endpoint"],
        auth=pxb.SharedKey(azure["account_key"]),
        ca_file=azure["ca_file"],
    )


def with_identity(azure: Dict[str, Any], location: str, client_id: str) -> pxb.Location:
    """The location through Workload Identity (the account is taken from the endpoint)."""
    return pxb.Location.open(
        location,
        endpoint=azure["blob_endpoint"],
        auth=pxb.WorkloadIdentity(
            client_id=client_id,
            tenant_id=azure["tenant_id"],
            token_file=azure["token_file"],
            authority_host=azure["authority_host"],
        ),
        ca_file=azure["ca_file"],
    )


def round_trip(loc: pxb.Location, tmp_path: Path) -> None:
    """backup → incremental backup → list → restore → verify → delete → gc."""
    src = tmp_path / "src"
    content = make_tree(src)
    first = loc.backup_volume(src, tag="azure")
    assert first.files == len(content) and first.stored_bytes > 0
    (src / "d0/f0.bin").write_bytes(b"changed")
    content["d0/f0.bin"] = b"changed"
    second = loc.backup_volume(src, tag="azure")
    assert second.parent == first.id
    assert second.bytes_read < first.bytes_read
    assert sorted(s.id for s in loc.list_backups()) == sorted([first.id, second.id])
    restored = loc.restore_volume(second.id, target=tmp_path / "dst")
    assert restored.files == len(content)
    assert read_tree(tmp_path / "dst") == read_tree(src)
    assert loc.verify(deep=True).ok
    loc.delete_backup(first.id)
    loc.delete_backup(second.id)
    assert loc.list_backups() == []
    g = loc.gc(grace_secs=0)
    assert g.deleted_chunks > 0 and g.deferred is None
    assert loc.verify().backups == []


def test_shared_key(azure: Dict[str, Any], tmp_path: Path) -> None:
    loc = with_key(azure, url(azure, "key", "tenant/a"))
    loc.create_container()
    loc.create_container()  # it exists: fine
    report = loc.check()
    assert report.ok, str(report)
    round_trip(loc, tmp_path)
    assert azure["account_key"] not in repr(pxb.SharedKey(azure["account_key"]))


def test_sas(azure: Dict[str, Any], tmp_path: Path) -> None:
    location = url(azure, "sas")
    with_key(azure, location).create_container()
    loc = pxb.Location.open(
        location,
        account=azure["account"],
        endpoint=azure["blob_endpoint"],
        auth=pxb.Sas(azure["sas"]),
        ca_file=azure["ca_file"],
    )
    assert loc.check().ok
    round_trip(loc, tmp_path)


def test_workload_identity(azure: Dict[str, Any], tmp_path: Path) -> None:
    location = url(azure, "wi", "federated")
    with_key(azure, location).create_container()
    loc = with_identity(azure, location, azure["client_id"])
    report = loc.check()
    assert report.ok, str(report)
    steps = {s.step: s for s in report.steps}
    assert steps["authenticate"].ok
    assert report.location == location
    round_trip(loc, tmp_path)


def test_workload_identity_async(azure: Dict[str, Any], tmp_path: Path) -> None:
    location = url(azure, "wi-async")
    with_key(azure, location).create_container()
    loc = with_identity(azure, location, azure["client_id"])
    src = tmp_path / "src"
    content = make_tree(src, files=4)

    async def main() -> None:
        assert (await loc.check_async()).ok
        b = await loc.backup_volume_async(src)
        assert [s.id for s in await loc.list_backups_async()] == [b.id]
        await loc.restore_volume_async(b.id, target=tmp_path / "dst")
        assert (await loc.verify_async()).ok
        await loc.delete_backup_async(b.id)
        assert (await loc.gc_async(grace_secs=0)).deleted_chunks > 0

    asyncio.run(main())
    assert read_tree(tmp_path / "dst") == content


def test_workload_identity_settings_from_the_environment(
    azure: Dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``auth=None``, Workload Identity as the CLI does it: every setting from the
    variables the Azure Workload Identity webhook injects (none of them is a secret)."""
    location = url(azure, "wi-env")
    with_key(azure, location).create_container()
    monkeypatch.setenv("AZURE_CLIENT_ID", azure["client_id"])
    monkeypatch.setenv("AZURE_TENANT_ID", azure["tenant_id"])
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", azure["token_file"])
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", azure["authority_host"])
    monkeypatch.setenv("PXB_AZURE_ENDPOINT", azure["blob_endpoint"])
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", azure["account"])
    loc = pxb.Location.open(location, ca_file=azure["ca_file"])
    assert loc.check().ok
    b = loc.backup_volume(make_tree_dir(tmp_path))
    assert [s.id for s in loc.list_backups()] == [b.id]


def make_tree_dir(tmp_path: Path) -> Path:
    src = tmp_path / "small"
    make_tree(src, files=2, size=1000)
    return src


def test_an_unknown_identity_is_refused(azure: Dict[str, Any], tmp_path: Path) -> None:
    location = url(azure, "refused")
    with_key(azure, location).create_container()
    loc = with_identity(azure, location, UNKNOWN_CLIENT_ID)

    report = loc.check()
    assert not report.ok
    failed = [s for s in report.steps if s.outcome == "failed"]
    assert failed[0].step == "authenticate", str(report)
    assert failed[0].error_kind in ("unauthenticated", "permission_denied"), failed[0]
    assert "FAILED" in str(report)

    with pytest.raises((pxb.Unauthenticated, pxb.PermissionDenied)) as e:
        loc.list_backups()
    assert isinstance(e.value, pxb.PxbError)
    with pytest.raises((pxb.Unauthenticated, pxb.PermissionDenied)):
        loc.backup_volume(make_tree_dir(tmp_path))

    async def main() -> None:
        with pytest.raises((pxb.Unauthenticated, pxb.PermissionDenied)):
            await loc.list_backups_async()

    asyncio.run(main())
    # Nothing was written by the refused identity.
    assert with_key(azure, location).list_backups() == []


def test_a_wrong_account_key_is_refused(azure: Dict[str, Any]) -> None:
    location = url(azure, "badkey")
    with_key(azure, location).create_container()
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    loc = pxb.Location.open(
        location,
        account=azure["account"],
        endpoint=azure["blob_endpoint"],
        auth=pxb.SharedKey(wrong),
        ca_file=azure["ca_file"],
    )
    with pytest.raises((pxb.Unauthenticated, pxb.PermissionDenied)) as e:
        loc.list_backups()
    assert wrong not in str(e.value)
