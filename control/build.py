"""Compile a config in a child process: ``python -m control.build PATH [--workload W] [--overrides JSON]``.

Prints one JSON object on stdout: ``{"snapshot": {...}}`` or ``{"issues": [{...}, ...]}``; exit 0
either way (exit 2 only for bad arguments). The sidecar uses this for its initial load and for
every reload, so the long-running data-plane process never imports the YAML loader and the schema
(about 3 MB of resident memory) and a pathological config cannot stall its event loop.
"""
import argparse
import dataclasses
import json
import sys

from control.errors import ConfigError, ConfigIssue


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m control.build")
    ap.add_argument("path")
    ap.add_argument("--workload")
    ap.add_argument("--overrides", default="{}", help="JSON object of Bootstrap field overrides")
    args = ap.parse_args(argv)
    from control.compile import build_snapshot

    try:
        snap = build_snapshot(args.path, workload=args.workload,
                              overrides=json.loads(args.overrides))
    except ConfigError as e:
        out = {"issues": [dataclasses.asdict(i) for i in e.issues]}
    except Exception as e:  # noqa: BLE001 - reported as an issue, never a traceback
        out = {"issues": [dataclasses.asdict(ConfigIssue(args.path, "", "", "", "",
                                                         f"internal error: {e!r}"))]}
    else:
        out = {"snapshot": snap.to_dict()}
    sys.stdout.write(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
