"""``examples/python/onboard.py`` onboards a tenant end to end against a real pxb-server on a
simulated fleet with real agents, and a second run changes nothing.

It gets a control plane of its own (``start_fixture``): the server's garden credential may be
used by one org, and a project may be onboarded only once, so it must not share the session's
``control_plane`` with the client tests. What it did is checked over plain HTTP, not through
``pxb``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "python" / "onboard.py"


@pytest.fixture(scope="module")
def fleet(start_fixture: Callable[..., Dict[str, Any]]) -> Dict[str, Any]:
    return start_fixture("control-plane", "--shoots", "3", "--project", "onboard")


def get(fleet: Dict[str, Any], path: str) -> Any:
    req = urllib.request.Request(fleet["url"] + path, headers={"authorization": f"Bearer {fleet['admin_token']}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def run_example(fleet: Dict[str, Any]) -> subprocess.CompletedProcess[str]:
    args: List[str] = [
        sys.executable,
        str(EXAMPLE),
        "--server",
        fleet["url"],
        "--org",
        fleet["org"],
        "--project",
        fleet["project"],
        "--credential",
        fleet["credential"],
        "--account",
        fleet["account"],
        "--container",
        fleet["container"],
        "--endpoint",
        fleet["blob_endpoint"],
        "--client-id",
        fleet["client_id"],
        "--tenant-id",
        fleet["tenant_id"],
        "--namespaces",
        "shop,blog",
        "--timeout",
        "240",
    ]
    # The token comes from the environment, as the example documents.
    env = dict(os.environ, PXB_TOKEN=fleet["admin_token"])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def test_the_example_onboards_a_tenant_until_its_fleet_is_ready(fleet: Dict[str, Any]) -> None:
    done = run_example(fleet)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    org = fleet["org"]
    assert get(fleet, f"/v1/orgs/{org}")["id"] == org
    discoveries = get(fleet, f"/v1/orgs/{org}/discoveries")["items"]
    assert [(d["project"], d["credential"]) for d in discoveries] == [(fleet["project"], fleet["credential"])]
    locations = get(fleet, f"/v1/orgs/{org}/locations")["items"]
    assert [(loc["name"], loc["mode"], loc["container"], loc["hasCredential"]) for loc in locations] == [
        ("primary", "federated", fleet["container"], False)
    ]
    schedules = get(fleet, f"/v1/orgs/{org}/schedules")["items"]
    assert [(s["id"], s["namespaces"], s["policy"]["kind"]) for s in schedules] == [
        ("nightly", ["shop", "blog"], "daily")
    ]
    status = get(fleet, f"/v1/fleet/status?org={org}")
    states = {e["cluster"]: e["state"] for e in status["items"]}
    assert states == {shoot: "Ready" for shoot in fleet["shoots"]}, status
    assert f"tenant {org} onboarded: 3 clusters Ready" in done.stdout, done.stdout


def test_a_second_run_keeps_what_exists(fleet: Dict[str, Any]) -> None:
    first = run_example(fleet)
    assert first.returncode == 0, f"stdout:\n{first.stdout}\nstderr:\n{first.stderr}"
    again = run_example(fleet)
    assert again.returncode == 0, f"stdout:\n{again.stdout}\nstderr:\n{again.stderr}"
    # The same org, discovery and location again are no change; a schedule of that name exists.
    assert "schedule nightly (daily at 02:00 UTC, keeping 7): exists, kept" in again.stdout, again.stdout
    org = fleet["org"]
    for what in ("discoveries", "locations", "schedules"):
        assert len(get(fleet, f"/v1/orgs/{org}/{what}")["items"]) == 1, what
