"""``invoke up`` / ``invoke down`` for the benchmark, without touching the project's state.

Runs the library calls the ``up`` task runs (``infra.stack_ops.up(engine="compose")``, the
migration, the wait for the API) in its own process, with two redirections so that nothing
outside the benchmark's scratch dir changes: the stack's record (normally
``.data/infra-stack.json``; the rendered compose file and the checkout id go beside it) and
the containers' secret files (normally ``.data/secrets/``). Configuration and passwords come
from the ``MA_INFRA_*`` environment, exactly as for ``invoke up``. Each log line of the engine
is printed with the seconds since start, so the caller can split the time into phases; the
last line is a JSON object.

``python -m bench.up_probe --scratch DIR [--no-build]`` or ``--down``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.up_probe")
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--down", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    scratch = Path(args.scratch)
    # The containers' secret files too (read when infra.secrets_file is imported).
    os.environ["MA_INFRA_SECRETS_DIR"] = str(scratch / "secrets")

    os.environ["MA_INFRA_STATE_FILE"] = str(scratch / "infra-stack.json")
    from infra import stack_ops
    from infra.progress import Lines

    scratch.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(f"{time.monotonic() - started:8.2f} {line}", flush=True)

    progress = Lines(log)
    log("imports done")
    if args.down:
        engine, found, _ = stack_ops.down_plan()
        stack_ops.down(engine, found, volumes=True, progress=progress)
        print(json.dumps({"down": True, "seconds": time.monotonic() - started}))
        return 0
    endpoints = stack_ops.up(engine="compose", build=not args.no_build, progress=progress)
    log("migrating")
    stack_ops.migrate(endpoints)
    stack_ops.wait_api_ready(endpoints)
    log("ready")
    print(json.dumps({"engine": str(endpoints.engine), "api_url": endpoints.api_url}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
