"""``python -m app_patch.retention``: see ``app_patch.retention.cli.main``."""

from app_patch.retention.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
