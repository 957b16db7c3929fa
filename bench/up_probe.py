"""``invoke up`` / ``invoke down`` for the benchmark, without touching the project's state.

Runs the library call the ``up`` task runs (``infra.engine.up(engine="compose", ...)``) in
its own process, with three redirections so that nothing outside the benchmark's scratch dir
changes: the engine's state file (normally ``.data/infra-stack.json``), the rendered
compose file (normally ``infra/rendered/compose.yml``) and the containers' secret files
(normally ``.data/secrets/``). Configuration and passwords come
from the ``MA_INFRA_*`` environment, exactly as for ``invoke up``. Each log line of the engine
is printed with the seconds since start, so the caller can split the time into phases; the
last line is a JSON object.

``python -m bench.up_probe --scratch DIR [--no-build]`` or ``--down``.
"""

from __future__ import annotations

import argparse
import functools
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

    from infra import compose_engine
    from infra import engine as stack_engine
    from infra.config import config_from_env

    scratch.mkdir(parents=True, exist_ok=True)
    stack_engine.STATE_FILE = scratch / "infra-stack.json"
    rendered = scratch / "compose.yml"
    compose_engine.up = functools.partial(compose_engine.up, path=rendered)
    compose_engine.down = functools.partial(compose_engine.down, path=rendered)

    def log(line: str) -> None:
        print(f"{time.monotonic() - started:8.2f} {line}", flush=True)

    log("imports done")
    if args.down:
        config = config_from_env(os.environ)
        stack_engine.down(remove_volumes=True, engine="compose", config=config, log=log)
        print(json.dumps({"down": True, "seconds": time.monotonic() - started}))
        return 0
    endpoints = stack_engine.up(engine="compose", build=not args.no_build, migrate=True, log=log)
    log("ready")
    print(json.dumps({"engine": str(endpoints.engine), "api_url": endpoints.api_url}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
