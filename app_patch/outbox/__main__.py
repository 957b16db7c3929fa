"""``python -m app_patch.outbox``: see ``app_patch.outbox.cli.main``."""

from app_patch.outbox.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
