"""The one compose stack this package's modules share, brought up once for the package.

Destructive for this project's containers and volumes on the host (pg-data, redis-data,
media-storage): they are removed before and after. The modules run in name order, and that
order matters: ``test_hardening`` and ``test_operations`` use the stack as it came up (and
pass values on through ``stack.shared``); ``test_ownership_and_volumes`` runs last, since it
takes the stack down and up again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra.support import Deployed, deployed_stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    with deployed_stack(tmp_path_factory, "infra") as deployed:
        print(f"timings: {deployed.timings}")
        yield deployed
