"""The job queue as the API sees it: one task name, one queue, and a producer per app.

The message carries only a job id; the job row is the truth. The API owns its producer
(`create_app` makes one from its settings), so it never imports `worker`; the worker builds
its Celery app from the same `celery_config` and registers the task under `TASK_NAME`.
"""

from __future__ import annotations

from celery import Celery

from app.settings import Settings

TASK_NAME = "histosynth.run_job"
QUEUE = "histosynth"


def make_celery(settings: Settings, include: tuple[str, ...] = ()) -> Celery:
    """A Celery app on the broker of `settings`; `include` names task modules (worker side)."""
    app = Celery("histosynth", broker=settings.resolved_broker_url, include=list(include))
    conf: dict = {
        "task_ignore_result": True,
        # Acknowledge after the task: a message whose worker died is delivered again. The
        # conditional claim in app.jobs makes that duplicate harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
    if settings.is_embedded:
        settings.ensure_dirs()
        queue_dir = settings.broker_folder / "queue"
        conf["broker_transport_options"] = {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(settings.broker_folder / "processed"),
            "store_processed": False,
            # Otherwise kombu writes its control exchange files into the current directory.
            "control_folder": str(settings.broker_folder / "control"),
        }
    else:
        # Redis: redeliver an unacknowledged message after the lease time, not Celery's 1 h default.
        conf["broker_transport_options"] = {"visibility_timeout": max(60, int(settings.lease_seconds * 2))}
    app.conf.update(conf)
    return app


class JobQueue:
    """Sends the wake-up message for a job id. Creating one connects to nothing."""

    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        self.celery = celery or make_celery(settings)

    def enqueue(self, job_id: str) -> None:
        self.celery.send_task(TASK_NAME, args=[job_id], queue=QUEUE)
