"""Job kind -> handler. Handlers import their heavy dependencies (torch) lazily."""

from __future__ import annotations

from worker.context import Handler, JobContext, Outcome


def _ingest(ctx: JobContext) -> Outcome:
    from worker.ingest import handle_ingest

    return handle_ingest(ctx)


def _train_gan(ctx: JobContext) -> Outcome:
    from worker.train_gan import handle_train_gan

    return handle_train_gan(ctx)


def _generate(ctx: JobContext) -> Outcome:
    from worker.generate import handle_generate

    return handle_generate(ctx)


def _train_classifier(ctx: JobContext) -> Outcome:
    from worker.classify import handle_train_classifier

    return handle_train_classifier(ctx)


def _evaluate(ctx: JobContext) -> Outcome:
    from worker.classify import handle_evaluate

    return handle_evaluate(ctx)


def _audit(ctx: JobContext) -> Outcome:
    from worker.audit import handle_audit

    return handle_audit(ctx)


def _experiment(ctx: JobContext) -> Outcome:
    from worker.experiment import handle_experiment

    return handle_experiment(ctx)


HANDLERS: dict[str, Handler] = {
    "ingest": _ingest,
    "train_gan": _train_gan,
    "generate": _generate,
    "train_classifier": _train_classifier,
    "evaluate": _evaluate,
    "audit": _audit,
    "experiment": _experiment,
}
