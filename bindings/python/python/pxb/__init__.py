"""pxb for Python: the engine, the Gardener provider, the server's typed client and the fleet
simulator of pxb, from the same Rust crates as the daemons and the ``pxb`` CLI.

Every I/O call has a sync form (which releases the GIL while it works) and an ``_async`` form:
a coroutine whose work runs on a shared Tokio runtime, never blocking the event loop. Nothing
runs until the coroutine is awaited, and cancelling the task that awaits it stops the work::

    report = asyncio.run(pxb.Location.open(url).check_async())

    async def main() -> None:
        loc = pxb.Location.open(url)
        check = asyncio.create_task(loc.check_async())
        backups = await loc.list_backups_async()
        report = await check

Errors are :class:`PxbError` and its subclasses, one per kind of error, whose ``str()`` is the
message the CLI prints.
"""

from pxb._pxb import (
    AlreadyExists,
    Corrupt,
    Invalid,
    IoError,
    NotFound,
    PermissionDenied,
    Precondition,
    PxbError,
    Throttled,
    Unauthenticated,
    Unavailable,
    __version__,
)

__all__ = [
    "AlreadyExists",
    "Corrupt",
    "Invalid",
    "IoError",
    "NotFound",
    "PermissionDenied",
    "Precondition",
    "PxbError",
    "Throttled",
    "Unauthenticated",
    "Unavailable",
    "__version__",
]

# --- location (src/location.rs) ---
from pxb._pxb import (  # noqa: E402
    BackupSummary,
    BackupVerification,
    CheckReport,
    CheckStep,
    DeletedBackup,
    GcReport,
    Location,
    LocationUpgrade,
    Sas,
    SharedKey,
    VerifyReport,
    VolumeBackup,
    VolumeRestore,
    WorkloadIdentity,
)

__all__ += [
    "BackupSummary",
    "BackupVerification",
    "CheckReport",
    "CheckStep",
    "DeletedBackup",
    "GcReport",
    "Location",
    "LocationUpgrade",
    "Sas",
    "SharedKey",
    "VerifyReport",
    "VolumeBackup",
    "VolumeRestore",
    "WorkloadIdentity",
]
# --- end location ---

# --- gardener, client, testing (src/gardener.rs, src/client.rs, src/testing.rs) ---
from pxb import models, testing  # noqa: E402
from pxb._pxb import Cluster, ClusterAccess, GardenerProvider  # noqa: E402
from pxb.client import AsyncPages, Client, Pages  # noqa: E402

__all__ += [
    "AsyncPages",
    "Client",
    "Cluster",
    "ClusterAccess",
    "GardenerProvider",
    "Pages",
    "models",
    "testing",
]
# --- end gardener, client, testing ---
