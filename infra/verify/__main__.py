"""``python -m infra.verify``: the checks of the recorded stack, as a table and an exit code."""

from infra.verify import report, run_checks

raise SystemExit(report(run_checks()))
