"""The plans of what the app sent: EXPLAIN (FORMAT JSON) recorded per statement, summarised."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine


class PlanRecorder:
    """EXPLAIN (FORMAT JSON) of every SELECT an engine sends, run on the same connection just
    before the statement itself, with its parameters: the plan of exactly what the app sent.

    ``analyze=True`` runs the statement a second time (EXPLAIN ANALYZE): never on a timed call.
    """

    def __init__(self, engine: AsyncEngine, *, analyze: bool = False) -> None:
        self.engine = engine.sync_engine
        self.options = "FORMAT JSON, ANALYZE, BUFFERS" if analyze else "FORMAT JSON"
        self.plans: list[tuple[str, dict[str, Any]]] = []  # (statement, top plan node)

    def __enter__(self) -> PlanRecorder:
        event.listen(self.engine, "before_cursor_execute", self._explain)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._explain)

    def _explain(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if executemany or not statement.lstrip().upper().startswith("SELECT"):
            return
        explain = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            explain.execute(f"EXPLAIN ({self.options}) {statement}", parameters)
            row = explain.fetchone()
        finally:
            explain.close()
        assert row is not None
        self.plans.append((statement, row[0][0]))  # one row: a JSON array of one document

    def on(self, table: str) -> list[dict[str, Any]]:
        """The plans of the statements that read ``table`` (``FROM <table>``)."""
        return [plan for statement, plan in self.plans if f"FROM {table}" in statement]


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan (``plan`` is the document's ``Plan``)."""
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def plan_text(plan: dict[str, Any]) -> str:
    """One line: ``Limit > Index Scan using ix_... on analysis_jobs``."""
    label = plan["Node Type"]
    if "Index Name" in plan:
        label += f" using {plan['Index Name']}"
    if "Relation Name" in plan:
        label += f" on {plan['Relation Name']}"
    if "Index Cond" in plan:
        cond = plan["Index Cond"]
        label += f" cond {cond if len(cond) <= 70 else cond[:67] + '...'}"
    if "Filter" in plan:
        label += " + filter"
    children = [plan_text(child) for child in plan.get("Plans", ())]
    if len(children) == 1:
        return f"{label} > {children[0]}"
    return f"{label} ({'; '.join(children)})" if children else label


def plan_summary(document: dict[str, Any]) -> str:
    """``plan_text`` plus, for EXPLAIN ANALYZE, rows, time and buffers."""
    plan = document["Plan"]
    text = plan_text(plan)
    if "Execution Time" in document:
        hit, read = plan.get("Shared Hit Blocks", 0), plan.get("Shared Read Blocks", 0)
        text += (
            f" [{plan.get('Actual Rows', '?')} rows, {document['Execution Time']:.2f} ms,"
            f" buffers hit {hit} read {read}]"
        )
    return text
