"""The Celery application. A message carries only a job id; the job row is the truth."""

from __future__ import annotations

from celery import Celery

from app.settings import Settings, get_settings

TASK_NAME = "histosynth.run_job"
QUEUE = "histosynth"


def make_celery(settings: Settings) -> Celery:
    app = Celery("histosynth", broker=settings.resolved_broker_url, include=["worker.tasks"])
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
        processed = settings.broker_folder / "processed"
        conf["broker_transport_options"] = {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(processed),
            "store_processed": False,
            # Otherwise kombu writes its control exchange files into the current directory.
            "control_folder": str(settings.broker_folder / "control"),
        }
    else:
        # Redis: redeliver an unacknowledged message after the lease time, not Celery's 1 h default.
        conf["broker_transport_options"] = {"visibility_timeout": max(60, int(settings.lease_seconds * 2))}
    app.conf.update(conf)
    return app


celery_app = make_celery(get_settings())
_producers: dict[str, Celery] = {}


def enqueue(job_id: str, settings: Settings | None = None) -> None:
    """Send the wake-up message for `job_id` on the broker of `settings` (default: the env's)."""
    app = celery_app
    if settings is not None and settings.resolved_broker_url != celery_app.conf.broker_url:
        app = _producers.get(settings.resolved_broker_url) or _producers.setdefault(
            settings.resolved_broker_url, make_celery(settings))
    app.send_task(TASK_NAME, args=[job_id], queue=QUEUE)
