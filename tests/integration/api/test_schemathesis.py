"""Property-based conformance: schemathesis against the live ``/openapi.json``.

The server runs in the test's event loop; schemathesis (sync, requests-based) runs in a worker
thread. Failures are collected rather than raised inside Hypothesis, so nothing is shrunk and
the run stays bounded; the test then reports every distinct failure at once.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.errors import FailureGroup, SerializationError
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.api.harness import LiveApp, describe

pytestmark = pytest.mark.usefixtures("clean_db")

POSITIVE_EXAMPLES = 50
NEGATIVE_EXAMPLES = 25
RUN_BUDGET_S = 120.0
CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Report:
    calls: int = 0
    server_errors: int = 0
    skipped: int = 0
    operations: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # distinct key -> first example
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, key: str, text: str) -> None:
        with self.lock:
            self.failures.setdefault(key, text)


def fuzz_operation(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    examples: int,
    *,
    base_url: str,
    session: requests.Session,
    report: Report,
    deadline: float,
) -> None:
    """One bounded Hypothesis run over one operation in one generation mode."""
    label = f"{operation.label} [{mode.value}]"

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case[Any]) -> None:
        if time.monotonic() > deadline:
            return
        try:
            response = case.call(base_url=base_url, session=session, timeout=30)
        except SerializationError:
            report.skipped += 1  # schemathesis cannot encode this negative case
            return
        except requests.RequestException as exc:
            report.fail(f"{label} connection: {type(exc).__name__}", f"{exc}")
            return
        with report.lock:
            report.calls += 1
            report.statuses[f"{operation.label} {response.status_code}"] += 1
            if response.status_code >= 500:
                report.server_errors += 1
        try:
            case.validate_response(response, checks=CHECKS, transport_kwargs={"base_url": base_url})
        except FailureGroup as group:
            for failure in group.exceptions:
                report.fail(
                    f"{label} {failure.title}",
                    f"{failure.title}: {failure.message}\n{group.message}",
                )

    try:
        fuzz()
    except Unsatisfiable:
        # e.g. negative mode for an operation without parameters: nothing can be invalid
        report.unsatisfiable.append(label)


def run_schemathesis(base_url: str, deadline: float) -> Report:
    """Blocking: load the live schema and fuzz every operation, positive then negative."""
    report = Report()
    session = requests.Session()
    session.trust_env = False  # 127.0.0.1 only, never through an environment proxy
    try:
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=10)
        for result in schema.get_all_operations():
            if not isinstance(result, Ok):
                report.fail(f"invalid schema: {result.err()}", str(result.err()))
                continue
            operation = result.ok()
            report.operations.append(operation.label)
            for mode, examples in (
                (GenerationMode.POSITIVE, POSITIVE_EXAMPLES),
                (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES),
            ):
                if time.monotonic() > deadline:
                    report.fail("budget", f"time budget exhausted before {operation.label}")
                    return report
                fuzz_operation(
                    operation,
                    mode,
                    examples,
                    base_url=base_url,
                    session=session,
                    report=report,
                    deadline=deadline,
                )
    finally:
        session.close()
    return report


async def test_openapi_schema_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, describe(response)
    paths = {re.sub(r"\{[^}]*\}", "{}", p) for p in response.json()["paths"]}
    expected = {
        "/analyses",
        "/analyses/{}",
        "/media/{}",
        "/media/{}/content",
        "/health/live",
        "/health/ready",
    }
    assert expected <= paths, f"missing from the schema: {sorted(expected - paths)}"


async def test_schemathesis_live_schema_conformance(api: LiveApp) -> None:
    started = time.monotonic()
    report = await asyncio.to_thread(run_schemathesis, api.base_url, started + RUN_BUDGET_S)
    elapsed = time.monotonic() - started
    summary = (
        f"{report.calls} calls over {len(report.operations)} operations "
        f"({report.skipped} cases not encodable; nothing to generate for "
        f"{report.unsatisfiable}) in {elapsed:.1f} s"
    )
    print(summary)  # visible with -s / in the -ra report on failure
    print(dict(sorted(report.statuses.items())))
    # the positive cases really reach the happy path of the upload
    assert report.statuses["POST /analyses 201"] > 0, dict(report.statuses)
    assert report.operations, "the live schema has no operations"
    assert report.calls > 0, summary
    assert report.server_errors == 0, f"{report.server_errors} 5xx answers; {summary}"
    details = "\n\n".join(f"== {key}\n{text[:1500]}" for key, text in report.failures.items())
    assert report.failures == {}, f"{len(report.failures)} distinct failures; {summary}\n{details}"
