"""Job kind -> handler. Handlers import their heavy dependencies (torch) lazily."""

from __future__ import annotations

from collections.abc import Callable

from worker.context import JobContext, Outcome


def _ingest(ctx: JobContext) -> Outcome:
    from worker.ingest import handle_ingest

    return handle_ingest(ctx)


HANDLERS: dict[str, Callable[[JobContext], Outcome]] = {
    "ingest": _ingest,
}
