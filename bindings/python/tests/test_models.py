"""``pxb.models`` is what ``scripts/gen-python-models`` makes from ``docs/openapi.json`` now, has a
type for every schema, and round-trips every schema's JSON and real answers of pxb-server."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict

import pytest

import pxb
from pxb import models

REPO = Path(__file__).resolve().parents[3]
SPEC = json.loads((REPO / "docs" / "openapi.json").read_text())
SCHEMAS: Dict[str, Any] = SPEC["components"]["schemas"]


def is_enum(schema: Dict[str, Any]) -> bool:
    return "enum" in schema or ("oneOf" in schema and all("const" in v for v in schema["oneOf"]))


def test_models_py_is_what_the_generator_makes_now(tmp_path: Path) -> None:
    out = tmp_path / "models.py"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-python-models"), "--out", str(out)],
        check=True,
    )
    current = Path(models.__file__).read_text()
    assert out.read_text() == current, "pxb/models.py is stale: run scripts/gen-python-models"


def test_the_stubtest_allowlist_names_every_enumeration_and_the_check_passes() -> None:
    allow = (REPO / "bindings" / "python" / "stubtest-allowlist.txt").read_text()
    line = next(l for l in allow.splitlines() if l.startswith("pxb\\.models\\."))
    enums = sorted(n for n, s in SCHEMAS.items() if is_enum(s))
    assert enums and line == "pxb\\.models\\.(" + "|".join(enums) + ")"
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-python-models"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_every_schema_has_a_type() -> None:
    for name, schema in SCHEMAS.items():
        assert hasattr(models, name), name
        assert name in models.__all__
        if not is_enum(schema):
            cls: Any = getattr(models, name)
            assert dataclasses.is_dataclass(cls), name
            json_names = {f[1] for f in getattr(models, name)._FIELDS}
            assert set(schema.get("properties", {})) <= json_names, name


def sample(schema: Dict[str, Any], depth: int = 0) -> Any:
    """A value of every property of `schema` (the first variant of unions), none left out."""
    if "$ref" in schema:
        return sample(SCHEMAS[schema["$ref"].rsplit("/", 1)[-1]], depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][-1]
    if schema.get("oneOf"):
        if all("const" in v for v in schema["oneOf"]):
            return schema["oneOf"][-1]["const"]
        value = sample(schema["oneOf"][-1], depth)
        value.update(sample({**schema, "oneOf": None, "type": "object"}, depth))
        return value
    if schema.get("anyOf"):
        return sample([v for v in schema["anyOf"] if v.get("type") != "null"][0], depth)
    t = schema.get("type")
    if isinstance(t, list):
        t = [x for x in t if x != "null"][0]
    if t == "object" or "properties" in schema:
        if "properties" in schema:
            return {k: sample(v, depth + 1) for k, v in schema["properties"].items()}
        extra = schema.get("additionalProperties")
        return {"key-1": sample(extra, depth + 1)} if isinstance(extra, dict) else {"k": "v"}
    if t == "array":
        return [sample(schema["items"], depth + 1)]
    return {"string": "text-7", "integer": 7, "number": 1.5, "boolean": True}[str(t)]


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEMAS.items() if not is_enum(s)))
def test_every_model_round_trips_its_json(name: str) -> None:
    cls = getattr(models, name)
    data = sample(SCHEMAS[name])
    model = cls.from_json(json.dumps(data))
    assert model.to_dict() == data
    assert cls.from_json(model.to_json()) == model
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(model, cls._FIELDS[0][0], None)


def test_fields_are_snake_case_with_the_json_names_kept() -> None:
    org = models.CreateOrg(
        id="acme",
        display_name="Acme",
        access=[models.RoleBindingInput(role="admin", groups=["acme-admins"])],
    )
    assert json.loads(org.to_json()) == {
        "id": "acme",
        "displayName": "Acme",
        "mode": "federated",
        "access": [{"role": "admin", "groups": ["acme-admins"], "appRoles": []}],
    }
    bracket = models.TimeBracket.from_json({"kind": "custom", "from": "2025-01-01T00:00:00Z"})
    assert bracket.from_ == "2025-01-01T00:00:00Z" and bracket.to is None
    assert bracket.to_dict() == {"kind": "custom", "from": "2025-01-01T00:00:00Z"}
    policy = models.SchedulePolicyInput(kind="weekly", day="monday", at="02:00", retain=4)
    assert policy.to_dict() == {"kind": "weekly", "day": "monday", "at": "02:00", "retain": 4, "timeZone": "UTC"}
    with pytest.raises(ValueError, match="the field 'id' is missing"):
        models.CreateOrg.from_json("{}")


def test_unknown_fields_of_an_answer_are_ignored_and_defaults_fill_in() -> None:
    rec = models.ClusterRecord.from_json(
        {
            "org": "acme",
            "id": "u1",
            "name": "s1",
            "source": "gardener",
            "providerType": "azure",
            "kubernetesVersion": "1.33.4",
            "region": "westeurope",
            "labels": {},
            "hibernated": False,
            "firstSeen": "2025-01-01T00:00:00Z",
            "fromTheFuture": 1,
        }
    )
    assert rec.status == models.ClusterStatus(state="Unknown")
    assert rec.discovery is None


def get(cp: Dict[str, Any], path: str) -> Any:
    req = urllib.request.Request(cp["url"] + path, headers={"authorization": f"Bearer {cp['admin_token']}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_real_answers_of_the_server_round_trip(control_plane: Dict[str, Any]) -> None:
    me = get(control_plane, "/v1/whoami")
    who = models.WhoAmI.from_json(me)
    assert who.provider_admin is True
    assert who.to_dict() == me
    fleet = get(control_plane, "/v1/fleet/status")
    view = models.FleetStatusView.from_json(fleet)
    assert {k: v for k, v in view.to_dict().items() if k != "next"} == {
        k: v for k, v in fleet.items() if k != "next"
    }
    prefs = get(control_plane, "/v1/me/preferences")
    assert models.PreferencesView.from_json(prefs).to_dict() == prefs
    # The typed client gives the same objects as decoding the raw answers.
    client = pxb.Client(control_plane["url"], token=control_plane["admin_token"])
    assert client.whoami() == who
    assert client.preferences() == models.PreferencesView.from_json(prefs)
