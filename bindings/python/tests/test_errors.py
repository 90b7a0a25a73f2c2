"""Error mapping: each kind of pxb error is its own exception class under ``pxb.PxbError``, and
its ``str()`` is exactly what the ``pxb`` CLI prints for the same error (``pxb: <message>``).
Also: authentication objects never show their secrets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

import pxb

REPO = Path(__file__).resolve().parents[3]
MISSING_ID = "20200101T000000Z-00000000"


def pxb_binary() -> str:
    """The ``pxb`` CLI: ``$PXB_BIN``, else ``<repo>/target/debug/pxb`` (``cargo build -p pxb-daemon``)."""
    path = os.environ.get("PXB_BIN") or str(REPO / "target" / "debug" / "pxb")
    assert os.access(path, os.X_OK), f"{path} is missing: build it with `cargo build -p pxb-daemon`"
    return path


def clean_env() -> Dict[str, str]:
    """This process's environment without the location and Azure settings."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "PXB_"))
    }


def cli_error(*args: str) -> str:
    """The message ``pxb <args>`` prints for its error (without the ``pxb: `` prefix)."""
    p = subprocess.run(
        [pxb_binary(), *args], capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines: List[str] = [l for l in p.stderr.splitlines() if l.startswith("pxb: ")]
    assert len(lines) == 1, p.stderr
    return lines[0][len("pxb: ") :]


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("AZURE_", "PXB_")):
            monkeypatch.delenv(k)


@pytest.fixture
def repo_url(tmp_path: Path) -> str:
    """A file:// location holding one backup (so it has a repository)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    url = f"file://{tmp_path / 'location'}"
    pxb.Location.open(url).backup_volume(src)
    return url


def test_the_hierarchy() -> None:
    kinds = [
        pxb.NotFound,
        pxb.AlreadyExists,
        pxb.Precondition,
        pxb.Unauthenticated,
        pxb.PermissionDenied,
        pxb.Throttled,
        pxb.Unavailable,
        pxb.Invalid,
        pxb.Corrupt,
        pxb.IoError,
    ]
    for k in kinds:
        assert issubclass(k, pxb.PxbError) and k is not pxb.PxbError
    assert issubclass(pxb.PxbError, Exception)
    assert len(set(kinds)) == len(kinds)


def test_missing_backup_is_not_found_with_the_cli_message(repo_url: str, tmp_path: Path) -> None:
    loc = pxb.Location.open(repo_url)
    with pytest.raises(pxb.NotFound) as e:
        loc.delete_backup(MISSING_ID)
    assert str(e.value) == cli_error("backup", "delete", "--location", repo_url, MISSING_ID)
    assert MISSING_ID in str(e.value)

    with pytest.raises(pxb.NotFound) as e:
        loc.restore_volume(MISSING_ID, target=tmp_path / "dst")
    assert str(e.value) == cli_error(
        "volume", "restore", "--location", repo_url, "--backup", MISSING_ID,
        "--target", str(tmp_path / "dst-cli"),
    )

    with pytest.raises(pxb.NotFound) as e:
        loc.restore_volume(target=tmp_path / "dst", tag="no-such-tag")
    assert str(e.value) == cli_error(
        "volume", "restore", "--location", repo_url, "--backup", "latest", "--tag", "no-such-tag",
        "--target", str(tmp_path / "dst-cli"),
    )


def test_bad_urls_are_invalid_with_the_cli_message(clean: None) -> None:
    for url in ["s3://bucket/x", "file://relative/path", "azblob://Bad_Container", ""]:
        with pytest.raises(pxb.Invalid) as e:
            pxb.Location.open(url)
        assert str(e.value) == cli_error("backup", "list", "--location", url), url


def test_an_azblob_location_without_an_account_is_invalid(clean: None) -> None:
    with pytest.raises(pxb.Invalid) as e:
        pxb.Location.open("azblob://container")
    assert str(e.value) == cli_error("backup", "list", "--location", "azblob://container")
    assert "AZURE_STORAGE_ACCOUNT" in str(e.value)


def test_the_account_and_endpoint_default_from_the_environment(
    clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PXB_AZURE_ENDPOINT", "https://127.0.0.1:9/fromenv")
    # The account is taken from the endpoint, and Workload Identity needs its client id.
    with pytest.raises(pxb.Invalid) as e:
        pxb.Location.open("azblob://container")
    assert "workload identity: no client id" in str(e.value)
    assert str(e.value) == cli_error("backup", "list", "--location", "azblob://container",
                                     "--azure-endpoint", "https://127.0.0.1:9/fromenv")


def test_bad_ids_and_arguments_are_invalid(repo_url: str, tmp_path: Path) -> None:
    loc = pxb.Location.open(repo_url)
    with pytest.raises(pxb.Invalid) as e:
        loc.delete_backup("../etc")
    assert str(e.value) == cli_error("backup", "delete", "--location", repo_url, "../etc")
    with pytest.raises(pxb.Invalid) as e:
        loc.backup_volume(tmp_path / "src", parent="not/an id")
    assert str(e.value) == cli_error(
        "volume", "backup", "--location", repo_url, "--path", str(tmp_path / "src"),
        "--parent", "not/an id",
    )
    with pytest.raises(pxb.Invalid):
        loc.gc(grace_secs=-1)
    with pytest.raises(pxb.Invalid):
        loc.check(step_timeout=float("nan"))
    with pytest.raises(pxb.Invalid):
        loc.verify(backups=["../x"])


def test_a_missing_source_is_an_io_error(repo_url: str, tmp_path: Path) -> None:
    loc = pxb.Location.open(repo_url)
    missing = tmp_path / "does-not-exist"
    with pytest.raises(pxb.IoError) as e:
        loc.backup_volume(missing)
    assert str(e.value) == cli_error("volume", "backup", "--location", repo_url, "--path", str(missing))
    assert str(missing) in str(e.value)


def test_async_errors_are_the_same(repo_url: str) -> None:
    import asyncio

    loc = pxb.Location.open(repo_url)

    async def main() -> None:
        with pytest.raises(pxb.NotFound) as e:
            await loc.delete_backup_async(MISSING_ID)
        assert str(e.value) == cli_error("backup", "delete", "--location", repo_url, MISSING_ID)

    asyncio.run(main())


def test_auth_objects_hide_their_secrets() -> None:
    key = "c2VjcmV0LWFjY291bnQta2V5LXZhbHVlPT0="
    token = "sv=2024-01-01&ss=b&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
    for obj, secret, expected in [
        (pxb.SharedKey(key), key, "pxb.SharedKey(key=<redacted>)"),
        (pxb.Sas(token), token, "pxb.Sas(token=<redacted>)"),
    ]:
        assert repr(obj) == expected
        assert str(obj) == expected
        assert secret not in repr(obj) and secret not in str(obj)
        assert not any(secret in str(getattr(obj, a, "")) for a in dir(obj) if not a.startswith("__"))
        assert not hasattr(obj, "key") and not hasattr(obj, "token")
    for cls in (pxb.SharedKey, pxb.Sas):
        with pytest.raises(TypeError):
            cls()  # type: ignore[call-arg]


def test_workload_identity_shows_its_settings(tmp_path: Path) -> None:
    wi = pxb.WorkloadIdentity("client", "tenant", tmp_path / "token")
    assert (wi.client_id, wi.tenant_id, wi.token_file) == ("client", "tenant", str(tmp_path / "token"))
    assert wi.authority_host is None
    assert repr(wi) == (
        f"pxb.WorkloadIdentity(client_id='client', tenant_id='tenant', token_file='{tmp_path / 'token'}')"
    )
    assert repr(pxb.WorkloadIdentity()) == (
        "pxb.WorkloadIdentity(client_id=None, tenant_id=None, token_file=None)"
    )
    wi = pxb.WorkloadIdentity(client_id="c", authority_host="https://login.example")
    assert repr(wi).endswith("authority_host='https://login.example')")


def test_auth_must_be_an_auth_object(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="auth must be pxb.WorkloadIdentity"):
        pxb.Location.open(f"file://{tmp_path}", auth="account-key")  # type: ignore[arg-type]


def test_a_file_location_ignores_azure_settings(tmp_path: Path) -> None:
    loc = pxb.Location.open(f"file://{tmp_path}", auth=pxb.Sas("x"), account="acct")
    assert loc.check().ok
