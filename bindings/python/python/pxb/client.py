"""``pxb.Client``: the typed client of pxb-server's REST API.

Every method calls the method of the same name of the Rust client (``pxb_daemon::client``) and
returns the dataclasses of :mod:`pxb.models`; inputs are those dataclasses too (a ``dict`` of the
JSON shape is accepted as well). Each call has an ``_async`` twin: a coroutine, or, for lists, an
async iterator. Lists are iterators that fetch their pages lazily (``page_size`` items per
request), so ``for b in client.list_backups("acme"):`` walks every backup without loading them
all at once.

Errors are :class:`pxb.PxbError` subclasses chosen by the API's error code (``forbidden`` →
:class:`pxb.PermissionDenied`, ``unauthenticated`` → :class:`pxb.Unauthenticated`, ``not_found``
→ :class:`pxb.NotFound`, …) with the message ``pxb`` prints, and the attributes ``status`` (the
HTTP status, or ``None`` when the server was not reached) and ``code`` (the API's code, or
``None``).

.. code-block:: python

    import pxb
    from pxb import models

    client = pxb.Client("https://pxb.example.net", token=token)
    client.create_org(models.CreateOrg(id="acme", display_name="Acme"))
    for backup in client.list_backups("acme", state="Success", page_size=50):
        print(backup.id, backup.cluster_name, backup.bytes)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    List,
    Mapping,
    Optional,
    Type,
    TypeVar,
    Union,
)

from pxb import _pxb
from pxb import models as m

__all__ = ["Client", "Pages", "AsyncPages"]

_M = TypeVar("_M", bound=m._Model)
_Body = Union[m._Model, Mapping[str, Any]]


def _body(body: _Body) -> str:
    if isinstance(body, m._Model):
        return body.to_json()
    if isinstance(body, Mapping):
        return json.dumps(dict(body))
    raise TypeError(f"expected a pxb.models dataclass or a dict, got {type(body).__name__}")


def _query(**params: Any) -> Dict[str, Any]:
    return {k.rstrip("_"): v for k, v in params.items() if v is not None}


class Pages(Generic[_M]):
    """Every item of a list, fetching one page per request as iteration reaches it."""

    def __init__(
        self,
        fetch: Callable[[Dict[str, Any]], str],
        model: Type[_M],
        query: Dict[str, Any],
    ) -> None:
        self._fetch = fetch
        self._model = model
        self._query = dict(query)
        self._items: List[_M] = []
        self._done = False
        #: Pages fetched so far.
        self.pages = 0
        #: The cursor of the next page (``None`` before the first and after the last).
        self.next_cursor: Optional[str] = None

    def __iter__(self) -> "Pages[_M]":
        return self

    def __next__(self) -> _M:
        while not self._items:
            if self._done:
                raise StopIteration
            answer = json.loads(self._fetch(self._query))
            self._take(answer)
        return self._items.pop(0)

    def _take(self, answer: Mapping[str, Any]) -> None:
        self.pages += 1
        self._items = [self._model.from_dict(i) for i in answer.get("items", [])]
        cursor = answer.get("next")
        if cursor is None or cursor == self._query.get("after"):
            self._done = True
            self.next_cursor = None
        else:
            self._query["after"] = cursor
            self.next_cursor = cursor


class AsyncPages(Pages[_M]):
    """:class:`Pages` as an async iterator: ``async for item in client.list_…_async(…)``."""

    def __init__(
        self,
        fetch: Callable[[Dict[str, Any]], Any],
        model: Type[_M],
        query: Dict[str, Any],
    ) -> None:
        super().__init__(lambda _q: "", model, query)
        self._afetch = fetch

    def __aiter__(self) -> "AsyncPages[_M]":
        return self

    async def __anext__(self) -> _M:
        while not self._items:
            if self._done:
                raise StopAsyncIteration
            answer = json.loads(await self._afetch(self._query))
            self._take(answer)
        return self._items.pop(0)

    def __iter__(self) -> "AsyncPages[_M]":
        raise TypeError("use `async for` with the _async lists")

    def __next__(self) -> _M:
        raise TypeError("use `async for` with the _async lists")


class Client:
    """A client of one pxb-server with one identity.

    ``server`` is the base URL (``https://pxb.example.net``), ``token`` the bearer token (from
    the OIDC issuer). ``ca_pem`` (PEM text) or ``ca_file`` (its path) adds CAs to trust besides
    the system's. ``timeout`` is the deadline of one call in seconds. Nothing is sent until the
    first call.
    """

    def __init__(
        self,
        server: str,
        token: Optional[str] = None,
        *,
        ca_pem: Optional[str] = None,
        ca_file: Optional[Union[str, Path]] = None,
        timeout: float = 60.0,
    ) -> None:
        if ca_file is not None:
            ca_pem = (ca_pem or "") + Path(ca_file).read_text()
        self._native = _pxb.ApiClient(server, token=token, ca_pem=ca_pem, timeout=timeout)

    @classmethod
    def _of(cls, native: _pxb.ApiClient) -> "Client":
        c = cls.__new__(cls)
        c._native = native
        return c

    @property
    def server(self) -> str:
        """The server's base URL."""
        return self._native.server

    def with_token(self, token: str) -> "Client":
        """This client with another bearer token (same connections)."""
        return Client._of(self._native.with_token(token))

    def __repr__(self) -> str:
        return f"pxb.Client(server={self.server!r})"

    # -- plumbing --------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: List[str],
        query: Optional[Mapping[str, Any]] = None,
        body: Optional[_Body] = None,
    ) -> Any:
        text = self._native.call(
            method,
            path,
            None if query is None else json.dumps(dict(query)),
            None if body is None else _body(body),
        )
        return json.loads(text)

    async def _call_async(
        self,
        method: str,
        path: List[str],
        query: Optional[Mapping[str, Any]] = None,
        body: Optional[_Body] = None,
    ) -> Any:
        text = await self._native.call_async(
            method,
            path,
            None if query is None else json.dumps(dict(query)),
            None if body is None else _body(body),
        )
        return json.loads(text)

    def _pages(self, method: str, path: List[str], model: Type[_M], query: Dict[str, Any]) -> Pages[_M]:
        native = self._native
        return Pages(lambda q: native.call(method, path, json.dumps(q), None), model, query)

    def _pages_async(
        self, method: str, path: List[str], model: Type[_M], query: Dict[str, Any]
    ) -> AsyncPages[_M]:
        native = self._native
        return AsyncPages(lambda q: native.call_async(method, path, json.dumps(q), None), model, query)

    # -- me --------------------------------------------------------------------------------

    def whoami(self) -> m.WhoAmI:
        """The caller and their role per org."""
        return m.WhoAmI.from_dict(self._call("whoami", []))

    async def whoami_async(self) -> m.WhoAmI:
        """:meth:`whoami` as a coroutine."""
        return m.WhoAmI.from_dict(await self._call_async("whoami", []))

    def preferences(self) -> m.PreferencesView:
        """The caller's preferences."""
        return m.PreferencesView.from_dict(self._call("preferences", []))

    async def preferences_async(self) -> m.PreferencesView:
        """:meth:`preferences` as a coroutine."""
        return m.PreferencesView.from_dict(await self._call_async("preferences", []))

    def update_preferences(self, body: Union[m.UpdatePreferences, Mapping[str, Any]]) -> m.PreferencesView:
        """Changes the caller's preferences."""
        return m.PreferencesView.from_dict(self._call("update_preferences", [], body=body))

    async def update_preferences_async(
        self, body: Union[m.UpdatePreferences, Mapping[str, Any]]
    ) -> m.PreferencesView:
        """:meth:`update_preferences` as a coroutine."""
        return m.PreferencesView.from_dict(await self._call_async("update_preferences", [], body=body))

    # -- fleet -----------------------------------------------------------------------------

    def fleet_status(
        self,
        *,
        org: Optional[str] = None,
        state: Optional[str] = None,
        limit: Optional[int] = None,
        after: Optional[str] = None,
    ) -> m.FleetStatusView:
        """One page of the fleet-wide status: counts per state and the clusters (of ``org``, in
        ``state``), ordered by org, name and id; ``next`` is the cursor of the next page."""
        q = _query(org=org, state=state, limit=limit, after=after)
        return m.FleetStatusView.from_dict(self._call("fleet_status", [], q))

    async def fleet_status_async(
        self,
        *,
        org: Optional[str] = None,
        state: Optional[str] = None,
        limit: Optional[int] = None,
        after: Optional[str] = None,
    ) -> m.FleetStatusView:
        """:meth:`fleet_status` as a coroutine."""
        q = _query(org=org, state=state, limit=limit, after=after)
        return m.FleetStatusView.from_dict(await self._call_async("fleet_status", [], q))

    def fleet_entries(
        self, *, org: Optional[str] = None, state: Optional[str] = None, page_size: Optional[int] = None
    ) -> Pages[m.FleetEntry]:
        """Every cluster of the fleet status (of ``org``, in ``state``), page by page."""
        return self._pages("fleet_status", [], m.FleetEntry, _query(org=org, state=state, limit=page_size))

    def fleet_entries_async(
        self, *, org: Optional[str] = None, state: Optional[str] = None, page_size: Optional[int] = None
    ) -> AsyncPages[m.FleetEntry]:
        """:meth:`fleet_entries` as an async iterator."""
        q = _query(org=org, state=state, limit=page_size)
        return self._pages_async("fleet_status", [], m.FleetEntry, q)

    # -- orgs ------------------------------------------------------------------------------

    def list_orgs(self, *, page_size: Optional[int] = None) -> Pages[m.OrgView]:
        """The orgs the caller can see."""
        return self._pages("list_orgs", [], m.OrgView, _query(limit=page_size))

    def list_orgs_async(self, *, page_size: Optional[int] = None) -> AsyncPages[m.OrgView]:
        """:meth:`list_orgs` as an async iterator."""
        return self._pages_async("list_orgs", [], m.OrgView, _query(limit=page_size))

    def create_org(self, body: Union[m.CreateOrg, Mapping[str, Any]]) -> m.OrgView:
        """Creates an org (provider admins)."""
        return m.OrgView.from_dict(self._call("create_org", [], body=body))

    async def create_org_async(self, body: Union[m.CreateOrg, Mapping[str, Any]]) -> m.OrgView:
        """:meth:`create_org` as a coroutine."""
        return m.OrgView.from_dict(await self._call_async("create_org", [], body=body))

    def get_org(self, org: str) -> m.OrgView:
        """One org."""
        return m.OrgView.from_dict(self._call("get_org", [org]))

    async def get_org_async(self, org: str) -> m.OrgView:
        """:meth:`get_org` as a coroutine."""
        return m.OrgView.from_dict(await self._call_async("get_org", [org]))

    def update_org(self, org: str, body: Union[m.UpdateOrg, Mapping[str, Any]]) -> m.OrgView:
        """Changes an org (provider admins)."""
        return m.OrgView.from_dict(self._call("update_org", [org], body=body))

    async def update_org_async(self, org: str, body: Union[m.UpdateOrg, Mapping[str, Any]]) -> m.OrgView:
        """:meth:`update_org` as a coroutine."""
        return m.OrgView.from_dict(await self._call_async("update_org", [org], body=body))

    # -- discoveries -----------------------------------------------------------------------

    def list_discoveries(self, org: str, *, page_size: Optional[int] = None) -> Pages[m.DiscoveryView]:
        """The org's discovery configurations."""
        return self._pages("list_discoveries", [org], m.DiscoveryView, _query(limit=page_size))

    def list_discoveries_async(
        self, org: str, *, page_size: Optional[int] = None
    ) -> AsyncPages[m.DiscoveryView]:
        """:meth:`list_discoveries` as an async iterator."""
        return self._pages_async("list_discoveries", [org], m.DiscoveryView, _query(limit=page_size))

    def create_discovery(self, org: str, body: Union[m.CreateDiscovery, Mapping[str, Any]]) -> m.DiscoveryView:
        """Adds a Gardener project to discover."""
        return m.DiscoveryView.from_dict(self._call("create_discovery", [org], body=body))

    async def create_discovery_async(
        self, org: str, body: Union[m.CreateDiscovery, Mapping[str, Any]]
    ) -> m.DiscoveryView:
        """:meth:`create_discovery` as a coroutine."""
        return m.DiscoveryView.from_dict(await self._call_async("create_discovery", [org], body=body))

    def get_discovery(self, org: str, name: str) -> m.DiscoveryView:
        """One discovery configuration."""
        return m.DiscoveryView.from_dict(self._call("get_discovery", [org, name]))

    async def get_discovery_async(self, org: str, name: str) -> m.DiscoveryView:
        """:meth:`get_discovery` as a coroutine."""
        return m.DiscoveryView.from_dict(await self._call_async("get_discovery", [org, name]))

    def delete_discovery(self, org: str, name: str) -> None:
        """Stops a discovery."""
        self._call("delete_discovery", [org, name])

    async def delete_discovery_async(self, org: str, name: str) -> None:
        """:meth:`delete_discovery` as a coroutine."""
        await self._call_async("delete_discovery", [org, name])

    # -- clusters --------------------------------------------------------------------------

    def list_clusters(
        self, org: str, *, state: Optional[str] = None, page_size: Optional[int] = None
    ) -> Pages[m.ClusterRecord]:
        """The org's clusters (in ``state``)."""
        return self._pages("list_clusters", [org], m.ClusterRecord, _query(state=state, limit=page_size))

    def list_clusters_async(
        self, org: str, *, state: Optional[str] = None, page_size: Optional[int] = None
    ) -> AsyncPages[m.ClusterRecord]:
        """:meth:`list_clusters` as an async iterator."""
        q = _query(state=state, limit=page_size)
        return self._pages_async("list_clusters", [org], m.ClusterRecord, q)

    def import_cluster(self, org: str, body: Union[m.ImportCluster, Mapping[str, Any]]) -> m.ClusterRecord:
        """Imports a cluster by its kubeconfig (classic mode)."""
        return m.ClusterRecord.from_dict(self._call("import_cluster", [org], body=body))

    async def import_cluster_async(
        self, org: str, body: Union[m.ImportCluster, Mapping[str, Any]]
    ) -> m.ClusterRecord:
        """:meth:`import_cluster` as a coroutine."""
        return m.ClusterRecord.from_dict(await self._call_async("import_cluster", [org], body=body))

    def get_cluster(self, org: str, name: str) -> m.ClusterRecord:
        """One cluster, by name or id."""
        return m.ClusterRecord.from_dict(self._call("get_cluster", [org, name]))

    async def get_cluster_async(self, org: str, name: str) -> m.ClusterRecord:
        """:meth:`get_cluster` as a coroutine."""
        return m.ClusterRecord.from_dict(await self._call_async("get_cluster", [org, name]))

    def remove_cluster(self, org: str, name: str) -> None:
        """Removes an imported cluster."""
        self._call("remove_cluster", [org, name])

    async def remove_cluster_async(self, org: str, name: str) -> None:
        """:meth:`remove_cluster` as a coroutine."""
        await self._call_async("remove_cluster", [org, name])

    # -- locations -------------------------------------------------------------------------

    def list_locations(self, org: str, *, page_size: Optional[int] = None) -> Pages[m.LocationView]:
        """The org's backup locations."""
        return self._pages("list_locations", [org], m.LocationView, _query(limit=page_size))

    def list_locations_async(
        self, org: str, *, page_size: Optional[int] = None
    ) -> AsyncPages[m.LocationView]:
        """:meth:`list_locations` as an async iterator."""
        return self._pages_async("list_locations", [org], m.LocationView, _query(limit=page_size))

    def create_location(self, org: str, body: Union[m.CreateLocation, Mapping[str, Any]]) -> m.LocationView:
        """Creates a backup location."""
        return m.LocationView.from_dict(self._call("create_location", [org], body=body))

    async def create_location_async(
        self, org: str, body: Union[m.CreateLocation, Mapping[str, Any]]
    ) -> m.LocationView:
        """:meth:`create_location` as a coroutine."""
        return m.LocationView.from_dict(await self._call_async("create_location", [org], body=body))

    def get_location(self, org: str, name: str) -> m.LocationView:
        """One location."""
        return m.LocationView.from_dict(self._call("get_location", [org, name]))

    async def get_location_async(self, org: str, name: str) -> m.LocationView:
        """:meth:`get_location` as a coroutine."""
        return m.LocationView.from_dict(await self._call_async("get_location", [org, name]))

    def update_location(
        self, org: str, name: str, body: Union[m.UpdateLocation, Mapping[str, Any]]
    ) -> m.LocationView:
        """Changes a location."""
        return m.LocationView.from_dict(self._call("update_location", [org, name], body=body))

    async def update_location_async(
        self, org: str, name: str, body: Union[m.UpdateLocation, Mapping[str, Any]]
    ) -> m.LocationView:
        """:meth:`update_location` as a coroutine."""
        return m.LocationView.from_dict(await self._call_async("update_location", [org, name], body=body))

    def delete_location(self, org: str, name: str) -> None:
        """Deletes a location."""
        self._call("delete_location", [org, name])

    async def delete_location_async(self, org: str, name: str) -> None:
        """:meth:`delete_location` as a coroutine."""
        await self._call_async("delete_location", [org, name])

    def location_status(
        self,
        org: str,
        name: str,
        *,
        cluster: Optional[str] = None,
        state: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> Pages[m.LocationStatus]:
        """A location's validation, sync and verify per cluster (of ``cluster``, in ``state``)."""
        q = _query(cluster=cluster, state=state, limit=page_size)
        return self._pages("location_status", [org, name], m.LocationStatus, q)

    def location_status_async(
        self,
        org: str,
        name: str,
        *,
        cluster: Optional[str] = None,
        state: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> AsyncPages[m.LocationStatus]:
        """:meth:`location_status` as an async iterator."""
        q = _query(cluster=cluster, state=state, limit=page_size)
        return self._pages_async("location_status", [org, name], m.LocationStatus, q)

    def validate_location(self, org: str, name: str) -> m.LocationView:
        """Asks every assigned cluster to validate a location now."""
        return m.LocationView.from_dict(self._call("validate_location", [org, name]))

    async def validate_location_async(self, org: str, name: str) -> m.LocationView:
        """:meth:`validate_location` as a coroutine."""
        return m.LocationView.from_dict(await self._call_async("validate_location", [org, name]))

    def sync_location(self, org: str, name: str, body: Union[m.SyncRequestBody, Mapping[str, Any]]) -> m.SyncRun:
        """Asks one cluster to sync a location."""
        return m.SyncRun.from_dict(self._call("sync_location", [org, name], body=body))

    async def sync_location_async(
        self, org: str, name: str, body: Union[m.SyncRequestBody, Mapping[str, Any]]
    ) -> m.SyncRun:
        """:meth:`sync_location` as a coroutine."""
        return m.SyncRun.from_dict(await self._call_async("sync_location", [org, name], body=body))

    def verify_location(self, org: str, name: str) -> m.LocationView:
        """Asks a location's clusters to check every backup's objects."""
        return m.LocationView.from_dict(self._call("verify_location", [org, name]))

    async def verify_location_async(self, org: str, name: str) -> m.LocationView:
        """:meth:`verify_location` as a coroutine."""
        return m.LocationView.from_dict(await self._call_async("verify_location", [org, name]))

    # -- backups ---------------------------------------------------------------------------

    def list_backups(
        self,
        org: str,
        *,
        cluster: Optional[str] = None,
        location: Optional[str] = None,
        state: Optional[str] = None,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        bracket: Optional[str] = None,
        namespace: Optional[str] = None,
        view: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> Pages[m.BackupRecord]:
        """The org's backups, newest first: of ``cluster`` (id), ``location`` (name), in
        ``state``, created from ``from_`` to ``to`` (RFC 3339) or in the last ``bracket``
        (``1h``, ``24h``, ``7d``, ``30d``), covering ``namespace``, of ``view`` (``namespaces``
        or ``vms``)."""
        q = _query(
            cluster=cluster, location=location, state=state, from_=from_, to=to,
            bracket=bracket, namespace=namespace, view=view, limit=page_size,
        )  # fmt: skip
        return self._pages("list_backups", [org], m.BackupRecord, q)

    def list_backups_async(
        self,
        org: str,
        *,
        cluster: Optional[str] = None,
        location: Optional[str] = None,
        state: Optional[str] = None,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        bracket: Optional[str] = None,
        namespace: Optional[str] = None,
        view: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> AsyncPages[m.BackupRecord]:
        """:meth:`list_backups` as an async iterator."""
        q = _query(
            cluster=cluster, location=location, state=state, from_=from_, to=to,
            bracket=bracket, namespace=namespace, view=view, limit=page_size,
        )  # fmt: skip
        return self._pages_async("list_backups", [org], m.BackupRecord, q)

    def create_backups(self, org: str, body: Union[m.BackupRequest, Mapping[str, Any]]) -> List[m.BackupRecord]:
        """Backs up namespaces on the selected clusters: one backup per cluster."""
        answer = self._call("create_backups", [org], body=body)
        return [m.BackupRecord.from_dict(i) for i in answer["items"]]

    async def create_backups_async(
        self, org: str, body: Union[m.BackupRequest, Mapping[str, Any]]
    ) -> List[m.BackupRecord]:
        """:meth:`create_backups` as a coroutine."""
        answer = await self._call_async("create_backups", [org], body=body)
        return [m.BackupRecord.from_dict(i) for i in answer["items"]]

    def get_backup(self, org: str, id: str) -> m.BackupRecord:
        """One backup, with its live progress."""
        return m.BackupRecord.from_dict(self._call("get_backup", [org, id]))

    async def get_backup_async(self, org: str, id: str) -> m.BackupRecord:
        """:meth:`get_backup` as a coroutine."""
        return m.BackupRecord.from_dict(await self._call_async("get_backup", [org, id]))

    def delete_backup(self, org: str, id: str, *, force: bool = False) -> m.DeleteOutcome:
        """Deletes a backup (``force``: only the record, leaving the data)."""
        return m.DeleteOutcome.from_dict(self._call("delete_backup", [org, id], {"force": force}))

    async def delete_backup_async(self, org: str, id: str, *, force: bool = False) -> m.DeleteOutcome:
        """:meth:`delete_backup` as a coroutine."""
        return m.DeleteOutcome.from_dict(await self._call_async("delete_backup", [org, id], {"force": force}))

    # -- restores --------------------------------------------------------------------------

    def list_restores(
        self,
        org: str,
        *,
        cluster: Optional[str] = None,
        location: Optional[str] = None,
        state: Optional[str] = None,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> Pages[m.RestoreRecord]:
        """The org's restores, newest first (filters as :meth:`list_backups`)."""
        q = _query(cluster=cluster, location=location, state=state, from_=from_, to=to, limit=page_size)
        return self._pages("list_restores", [org], m.RestoreRecord, q)

    def list_restores_async(
        self,
        org: str,
        *,
        cluster: Optional[str] = None,
        location: Optional[str] = None,
        state: Optional[str] = None,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> AsyncPages[m.RestoreRecord]:
        """:meth:`list_restores` as an async iterator."""
        q = _query(cluster=cluster, location=location, state=state, from_=from_, to=to, limit=page_size)
        return self._pages_async("list_restores", [org], m.RestoreRecord, q)

    def create_restore(self, org: str, body: Union[m.RestoreRequest, Mapping[str, Any]]) -> m.RestoreRecord:
        """Restores a backup."""
        return m.RestoreRecord.from_dict(self._call("create_restore", [org], body=body))

    async def create_restore_async(
        self, org: str, body: Union[m.RestoreRequest, Mapping[str, Any]]
    ) -> m.RestoreRecord:
        """:meth:`create_restore` as a coroutine."""
        return m.RestoreRecord.from_dict(await self._call_async("create_restore", [org], body=body))

    def get_restore(self, org: str, id: str) -> m.RestoreRecord:
        """One restore."""
        return m.RestoreRecord.from_dict(self._call("get_restore", [org, id]))

    async def get_restore_async(self, org: str, id: str) -> m.RestoreRecord:
        """:meth:`get_restore` as a coroutine."""
        return m.RestoreRecord.from_dict(await self._call_async("get_restore", [org, id]))

    # -- schedules -------------------------------------------------------------------------

    def list_schedules(
        self,
        org: str,
        *,
        cluster: Optional[str] = None,
        location: Optional[str] = None,
        state: Optional[str] = None,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> Pages[m.ScheduleRecord]:
        """The org's schedules."""
        q = _query(cluster=cluster, location=location, state=state, from_=from_, to=to, limit=page_size)
        return self._pages("list_schedules", [org], m.ScheduleRecord, q)

    def list_schedules_async(
        self,
        org: str,
        *,
        cluster: Optional[str] = None,
        location: Optional[str] = None,
        state: Optional[str] = None,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> AsyncPages[m.ScheduleRecord]:
        """:meth:`list_schedules` as an async iterator."""
        q = _query(cluster=cluster, location=location, state=state, from_=from_, to=to, limit=page_size)
        return self._pages_async("list_schedules", [org], m.ScheduleRecord, q)

    def create_schedule(self, org: str, body: Union[m.ScheduleRequest, Mapping[str, Any]]) -> m.ScheduleRecord:
        """Creates a schedule."""
        return m.ScheduleRecord.from_dict(self._call("create_schedule", [org], body=body))

    async def create_schedule_async(
        self, org: str, body: Union[m.ScheduleRequest, Mapping[str, Any]]
    ) -> m.ScheduleRecord:
        """:meth:`create_schedule` as a coroutine."""
        return m.ScheduleRecord.from_dict(await self._call_async("create_schedule", [org], body=body))

    def get_schedule(self, org: str, name: str) -> m.ScheduleRecord:
        """One schedule."""
        return m.ScheduleRecord.from_dict(self._call("get_schedule", [org, name]))

    async def get_schedule_async(self, org: str, name: str) -> m.ScheduleRecord:
        """:meth:`get_schedule` as a coroutine."""
        return m.ScheduleRecord.from_dict(await self._call_async("get_schedule", [org, name]))

    def update_schedule(
        self, org: str, name: str, body: Union[m.UpdateSchedule, Mapping[str, Any]]
    ) -> m.ScheduleRecord:
        """Pauses or resumes a schedule."""
        return m.ScheduleRecord.from_dict(self._call("update_schedule", [org, name], body=body))

    async def update_schedule_async(
        self, org: str, name: str, body: Union[m.UpdateSchedule, Mapping[str, Any]]
    ) -> m.ScheduleRecord:
        """:meth:`update_schedule` as a coroutine."""
        return m.ScheduleRecord.from_dict(await self._call_async("update_schedule", [org, name], body=body))

    def delete_schedule(self, org: str, name: str) -> None:
        """Deletes a schedule; its backups stay."""
        self._call("delete_schedule", [org, name])

    async def delete_schedule_async(self, org: str, name: str) -> None:
        """:meth:`delete_schedule` as a coroutine."""
        await self._call_async("delete_schedule", [org, name])
