"""A worker process started by the supervisor (``python -m meshproxy.worker --fd N``).

It serves the data plane with SO_REUSEPORT listeners and obeys the supervisor's messages on the
inherited socket (see meshproxy/runner.py for the protocol). It exits when the supervisor asks it
to drain or when the supervisor goes away.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys

from control.snapshot import Snapshot
from meshproxy.runner import new_loop
from meshproxy.sidecar import Sidecar

log = logging.getLogger("meshproxy")


async def serve(fd: int, index: int) -> int:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024 * 1024)
    sidecar = Sidecar(loop, reuse_port=True, worker_id=index)
    # The supervisor handles signals; a terminal's Ctrl-C reaches the whole process group.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)

    def send(msg):
        writer.write(json.dumps(msg).encode() + b"\n")

    async def idle():
        send({"op": "idle", "index": index})

    sidecar.on_idle = idle

    while True:
        line = await reader.readline()
        if not line:
            log.info("worker %d: supervisor gone; draining", index)
            await sidecar.drain(sidecar.snapshot.bootstrap.drain_duration if sidecar.snapshot
                                else 0)
            return 0
        msg = json.loads(line)
        op = msg.get("op")
        if op == "apply":
            try:
                snap = Snapshot.from_dict(msg["snapshot"])
                await sidecar.apply(snap)
                send({"op": "applied", "version": snap.version, "error": None})
            except OSError as e:
                from meshproxy.runner import _apply_error
                send({"op": "applied", "version": None, "error": _apply_error(e)})
            except Exception as e:  # noqa: BLE001 - reported to the supervisor, old config stays
                send({"op": "applied", "version": None, "error": f"{type(e).__name__}: {e}"})
        elif op == "stats":
            send({"op": "stats", "id": msg.get("id"), "index": index,
                  "stats": sidecar.local_stats(),
                  "clusters": sidecar.cluster_infos()})
        elif op == "drain_listeners":
            await sidecar.drain_listeners()
        elif op == "drain":
            await sidecar.drain(float(msg.get("timeout", 5.0)))
            await writer.drain()
            return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="meshproxy-worker")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [worker {args.index}] %(message)s")
    loop = new_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(serve(args.fd, args.index))
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
