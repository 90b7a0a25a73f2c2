"""Ctrl-C during a sync call: the interpreter gets ``KeyboardInterrupt`` within a moment, even
while the call waits on a peer that never answers, and the work is dropped (its connection is
closed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Runs in its own interpreter: pytest treats a KeyboardInterrupt in its own process as the user
# stopping the session.
SCRIPT = """
import base64, os, signal, socket, sys, threading, time
import pxb

# A blob endpoint that accepts connections and never answers (not even the TLS handshake).
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
held = []
def accept():
    while True:
        held.append(srv.accept()[0])
threading.Thread(target=accept, daemon=True).start()

loc = pxb.Location.open(
    "azblob://backups",
    account="devstoreaccount1",
    endpoint=f"https://127.0.0.1:{srv.getsockname()[1]}/devstoreaccount1",
    auth=pxb.SharedKey(base64.b64encode(b"k" * 64).decode()),
)
def ctrl_c():
    while not held:
        time.sleep(0.01)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=ctrl_c, daemon=True).start()

start = time.monotonic()
try:
    loc.backup_volume(sys.argv[1])
    print("finished")
except KeyboardInterrupt:
    print("interrupted", round(time.monotonic() - start, 2), flush=True)
except pxb.PxbError as e:
    print("error", type(e).__name__, e)
# The dropped work closes its connection: the peer reads to the end.
conn = held[0]
conn.settimeout(10)
while conn.recv(4096):
    pass
print("closed", round(time.monotonic() - start, 2))
"""


def test_ctrl_c_stops_a_sync_call_waiting_on_a_silent_peer(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stdout.split()
    assert out.returncode == 0 and "interrupted" in lines, (out.stdout, out.stderr)
    interrupted = float(lines[lines.index("interrupted") + 1])
    # The signal is sent ~0.5 s after the connection opened; it is seen within ~100 ms.
    assert 0.4 < interrupted < 3, out.stdout
    assert "closed" in lines, (out.stdout, out.stderr)
    assert float(lines[lines.index("closed") + 1]) < interrupted + 5, out.stdout
