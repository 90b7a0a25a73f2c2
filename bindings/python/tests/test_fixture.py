"""The fixtures are the real parts: Azurite over HTTPS behind the test CA, the Entra ID stand-in
exchanging the token file, the real pxb-server with its logins, the simulated garden.

Plain ``urllib`` and ``ssl`` only, no ``pxb``: these run before the bindings exist.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional, Tuple

import pytest

X_MS_VERSION = "2021-08-06"


def request(
    url: str,
    *,
    method: str = "GET",
    headers: Optional[Dict[str, str]] = None,
    data: Optional[bytes] = None,
    context: Optional[ssl.SSLContext] = None,
) -> Tuple[int, bytes]:
    """The status and body of one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, context=context, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def trusting(azure: Dict[str, Any]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=azure["ca_file"])


def test_azurite_answers_over_https_verified_by_the_test_ca(azure: Dict[str, Any]) -> None:
    assert azure["blob_endpoint"].startswith("https://127.0.0.1:")
    assert azure["blob_endpoint"].endswith("/" + azure["account"])
    status, body = request(f"{azure['blob_endpoint']}?comp=list&{azure['sas']}", context=trusting(azure))
    assert status == 200, body
    assert b"<EnumerationResults" in body


def test_azurite_is_not_trusted_without_the_test_ca(azure: Dict[str, Any]) -> None:
    with pytest.raises(urllib.error.URLError) as e:
        request(f"{azure['blob_endpoint']}?comp=list&{azure['sas']}", context=ssl.create_default_context())
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError), e.value


def test_azurite_refuses_a_forged_sas(azure: Dict[str, Any]) -> None:
    forged = re.sub(r"sig=[^&]+", "sig=" + urllib.parse.quote(base64.b64encode(b"x" * 32)), azure["sas"])
    assert forged != azure["sas"]
    status, body = request(f"{azure['blob_endpoint']}?comp=list&{forged}", context=trusting(azure))
    assert status == 403, body


def test_a_container_under_the_prefix_is_created_with_the_sas_and_listed(azure: Dict[str, Any]) -> None:
    name = f"{azure['container_prefix']}-fixture"
    ctx = trusting(azure)
    status, body = request(
        f"{azure['blob_endpoint']}/{name}?restype=container&{azure['sas']}", method="PUT", data=b"", context=ctx
    )
    assert status == 201, body
    status, body = request(
        f"{azure['blob_endpoint']}?comp=list&prefix={azure['container_prefix']}&{azure['sas']}", context=ctx
    )
    assert status == 200, body
    assert re.findall(rb"<Name>([^<]+)</Name>", body) == [name.encode()]


def exchange(azure: Dict[str, Any], client_id: str) -> Tuple[int, Dict[str, Any]]:
    """What ``azure_identity`` sends for Workload Identity: the token file as client assertion."""
    with open(azure["token_file"], encoding="utf-8") as f:
        assertion = f.read().strip()
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "scope": "https://storage.azure.com/.default",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
    ).encode()
    status, body = request(
        f"{azure['authority_host']}/{azure['tenant_id']}/oauth2/v2.0/token",
        method="POST",
        headers={"content-type": "application/x-www-form-urlencoded"},
        data=form,
        context=trusting(azure),
    )
    return status, json.loads(body)


def test_workload_identity_through_the_entra_stand_in_reaches_azurite(azure: Dict[str, Any]) -> None:
    status, token = exchange(azure, azure["client_id"])
    assert status == 200, token
    assert token["token_type"] == "Bearer"
    status, body = request(
        f"{azure['blob_endpoint']}?comp=list",
        headers={"authorization": f"Bearer {token['access_token']}", "x-ms-version": X_MS_VERSION},
        context=trusting(azure),
    )
    assert status == 200, body
    assert b"<EnumerationResults" in body


def test_the_entra_stand_in_refuses_an_unknown_client(azure: Dict[str, Any]) -> None:
    status, answer = exchange(azure, "00000000-0000-4000-8000-00000000dead")
    assert status in (400, 401), answer
    assert "access_token" not in answer
    assert answer["error_description"].startswith("AADSTS"), answer


def api(control_plane: Dict[str, Any], path: str, token: Optional[str]) -> Tuple[int, bytes]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return request(control_plane["url"] + path, headers=headers)


def test_the_server_is_healthy(control_plane: Dict[str, Any]) -> None:
    assert control_plane["url"].startswith("http://127.0.0.1:")
    status, body = api(control_plane, "/healthz", None)
    assert (status, body.strip()) == (200, b"ok")


def test_the_api_answers_the_admin_and_refuses_anonymous_callers(control_plane: Dict[str, Any]) -> None:
    status, body = api(control_plane, "/v1/orgs", control_plane["admin_token"])
    assert status == 200, body
    assert isinstance(json.loads(body)["items"], list)
    status, body = api(control_plane, "/v1/orgs", None)
    assert status == 401, body
    assert json.loads(body)["error"]["code"] == "unauthenticated", body
    status, body = api(control_plane, "/v1/orgs", control_plane["admin_token"][:-4] + "AAAA")
    assert status == 401, body


def test_the_tokens_log_in_as_their_users(control_plane: Dict[str, Any]) -> None:
    status, body = api(control_plane, "/v1/whoami", control_plane["admin_token"])
    assert status == 200, body
    assert json.loads(body)["providerAdmin"] is True
    subjects = {}
    for user, token in control_plane["tokens"].items():
        status, body = api(control_plane, "/v1/whoami", token)
        assert status == 200, (user, body)
        me = json.loads(body)
        assert me["providerAdmin"] is False, (user, me)
        subjects[user] = me["subject"]
    assert sorted(subjects) == ["acme-admin", "acme-viewer", "globex-admin"]
    assert len(set(subjects.values())) == 3, subjects


def test_the_garden_kubeconfig_lists_the_shoots(control_plane: Dict[str, Any]) -> None:
    with open(control_plane["garden_kubeconfig"], encoding="utf-8") as f:
        kubeconfig = f.read()
    server = re.search(r"server: (\S+)", kubeconfig)
    ca = re.search(r"certificate-authority-data: (\S+)", kubeconfig)
    token = re.search(r"token: (\S+)", kubeconfig)
    assert server and ca and token, kubeconfig
    ctx = ssl.create_default_context(cadata=base64.b64decode(ca.group(1)).decode())
    project = control_plane["project"]
    status, body = request(
        f"{server.group(1)}/apis/core.gardener.cloud/v1beta1/namespaces/garden-{project}/shoots",
        headers={"authorization": f"Bearer {token.group(1)}"},
        context=ctx,
    )
    assert status == 200, body
    names = sorted(s["metadata"]["name"] for s in json.loads(body)["items"])
    assert names == sorted(control_plane["shoots"])
    assert len(names) == 3
