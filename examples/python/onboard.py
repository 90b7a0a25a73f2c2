#!/usr/bin/env python3
"""Onboards a tenant end to end with pxb's Python client, as a provider's automation would:

1. the org, with the tenant's admin and viewer groups;
2. a discovery of the tenant's Gardener project (through a garden credential the server knows);
3. a federated backup location on the tenant's Azure Blob container (every cluster reaches it
   with Workload Identity; the server holds no credential);
4. a daily schedule of the tenant's namespaces on every cluster;

then waits until the fleet status shows every cluster of the org Ready (reachable, agent
current, the location valid there). Running it again changes nothing: what exists is kept.

    python examples/python/onboard.py --server https://pxb.example.net --org acme \\
        --project acme --credential acme --account acmestorage --container backups \\
        --client-id 0000-... [--endpoint URL] [--tenant-id ...] [--namespaces shop,blog]

The server and the token (a provider admin's: creating orgs needs one) come from ``--server``
and ``--token`` or the environment (``PXB_SERVER``, ``PXB_TOKEN``). It exits 0 once the tenant
is Ready, 1 on an error or when ``--timeout`` seconds pass first.

``scripts/test`` runs it against a simulated fleet (``bindings/python/tests/test_example_onboard.py``)
and checks it with ``mypy --strict``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List, Optional, Sequence, TypeVar

import pxb
from pxb.models import (
    ClusterSelectorInput,
    CreateDiscovery,
    CreateLocation,
    CreateOrg,
    DiscoveryView,
    FleetEntry,
    RoleBindingInput,
    SchedulePolicyInput,
    ScheduleRequest,
)

T = TypeVar("T")

# Fleet states that say nothing about pxb on the cluster: not waited for.
NOT_OURS = ("Ineligible", "Retired", "Hibernated")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--server", default=os.environ.get("PXB_SERVER"), help="pxb-server URL (PXB_SERVER)")
    p.add_argument("--token", default=os.environ.get("PXB_TOKEN"), help="bearer token (PXB_TOKEN)")
    p.add_argument("--org", required=True, help="the tenant's org id (a DNS label)")
    p.add_argument("--display-name", help="the org's name for humans (default: the id)")
    p.add_argument("--admin-group", help="token group of the tenant's admins (default <org>-admins)")
    p.add_argument("--viewer-group", help="token group of the tenant's viewers (default <org>-viewers)")
    p.add_argument("--project", required=True, help="the tenant's Gardener project")
    p.add_argument("--credential", required=True, help="the server's garden credential for it")
    p.add_argument("--account", required=True, help="the tenant's storage account")
    p.add_argument("--container", required=True, help="the tenant's blob container")
    p.add_argument("--endpoint", help="blob endpoint (default: the account's public one)")
    p.add_argument("--client-id", required=True, help="the managed identity the agents use")
    p.add_argument("--tenant-id", help="the Entra tenant of that identity")
    p.add_argument("--location", default="primary", help="the location's name")
    p.add_argument("--schedule", default="nightly", help="the schedule's name")
    p.add_argument("--at", default="02:00", help="daily at HH:MM (default 02:00)")
    p.add_argument("--time-zone", default="UTC", help="IANA time zone of --at")
    p.add_argument("--retain", type=int, default=7, help="successful backups kept per cluster")
    p.add_argument("--namespaces", default="default", help="comma-separated namespaces to back up")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for Ready")
    args = p.parse_args(argv)
    if not args.server or not args.token:
        p.error("--server and --token (or PXB_SERVER and PXB_TOKEN) are required")
    return args


def create(what: str, make: Callable[[], T], existing: Callable[[], T]) -> T:
    """``make()``; if something else of that name exists, ``existing()``, kept as it is. (The
    server answers a create of what exists already with the same content as a success.)"""
    try:
        made = make()
        print(f"{what}: ok")
        return made
    except pxb.AlreadyExists:
        print(f"{what}: exists, kept")
        return existing()


def wait_until(what: str, timeout: float, probe: Callable[[], Optional[str]]) -> None:
    """Calls ``probe`` every 2 s until it returns ``None`` (done); it returns what it waits for
    otherwise, printed when it changes. Raises ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Optional[str] = None
    while True:
        waiting = probe()
        if waiting is None:
            return
        if waiting != last:
            print(f"  waiting for {what}: {waiting}")
            last = waiting
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s; last: {waiting}")
        time.sleep(2)


def fleet_of(client: pxb.Client, org: str) -> List[FleetEntry]:
    """Every cluster of ``org`` in the fleet status, page by page."""
    entries: List[FleetEntry] = []
    after: Optional[str] = None
    while True:
        page = client.fleet_status(org=org, limit=1000, after=after)
        entries.extend(page.items)
        if not page.next:
            return entries
        after = page.next


def onboard(args: argparse.Namespace) -> None:
    client = pxb.Client(str(args.server), token=str(args.token))
    org: str = args.org
    namespaces = [n.strip() for n in str(args.namespaces).split(",") if n.strip()]
    everything = ClusterSelectorInput(all=True)

    create(
        f"org {org}",
        lambda: client.create_org(
            CreateOrg(
                id=org,
                display_name=args.display_name or org,
                access=[
                    RoleBindingInput(role="admin", groups=[args.admin_group or f"{org}-admins"]),
                    RoleBindingInput(role="viewer", groups=[args.viewer_group or f"{org}-viewers"]),
                ],
            )
        ),
        lambda: client.get_org(org),
    )
    discovery_id = "gardener"
    create(
        f"discovery of project {args.project}",
        lambda: client.create_discovery(
            org,
            CreateDiscovery(id=discovery_id, project=args.project, credential=args.credential),
        ),
        lambda: client.get_discovery(org, discovery_id),
    )

    def discovered() -> Optional[str]:
        d: DiscoveryView = client.get_discovery(org, discovery_id)
        if d.status.state == "Running" and d.status.shoots > 0:
            return None
        return f"{d.status.state}, {d.status.shoots} shoots" + (
            f" ({d.status.message})" if d.status.message else ""
        )

    wait_until("the project's shoots", args.timeout, discovered)
    shoots = client.get_discovery(org, discovery_id).status.shoots
    print(f"discovered {shoots} shoots in project {args.project}")

    location: str = args.location
    create(
        f"federated location {location} (container {args.container} of {args.account})",
        lambda: client.create_location(
            org,
            CreateLocation(
                name=location,
                provider="azure",
                account=args.account,
                container=args.container,
                endpoint=args.endpoint,
                client_id=args.client_id,
                tenant_id=args.tenant_id,
                clusters=everything,
            ),
        ),
        lambda: client.get_location(org, location),
    )
    create(
        f"schedule {args.schedule} (daily at {args.at} {args.time_zone}, keeping {args.retain})",
        lambda: client.create_schedule(
            org,
            ScheduleRequest(
                name=args.schedule,
                policy=SchedulePolicyInput(
                    kind="daily", at=args.at, retain=args.retain, time_zone=args.time_zone
                ),
                clusters=everything,
                namespaces=namespaces,
                location=location,
            ),
        ),
        lambda: client.get_schedule(org, args.schedule),
    )

    def ready() -> Optional[str]:
        entries = fleet_of(client, org)
        ours = [e for e in entries if e.state not in NOT_OURS]
        not_ready = sorted(f"{e.cluster} {e.state}" for e in ours if e.state != "Ready")
        if len(entries) >= shoots and ours and not not_ready:
            return None
        return f"{len(ours) - len(not_ready)} of {shoots} Ready" + (
            f"; {', '.join(not_ready[:5])}" if not_ready else ""
        )

    wait_until(f"every cluster of {org} Ready", args.timeout, ready)
    entries = fleet_of(client, org)
    ready_count = sum(1 for e in entries if e.state == "Ready")
    others = [f"{e.cluster} {e.state}" for e in entries if e.state != "Ready"]
    print(
        f"tenant {org} onboarded: {ready_count} clusters Ready, location {location} valid on each"
        + (f" (not pxb's to fix: {', '.join(others)})" if others else "")
    )


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        onboard(args)
    except (pxb.PxbError, TimeoutError) as e:
        print(f"onboard: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
