"""The worker's Celery application: the API's queue config (`app.queue`) plus the task module."""

from __future__ import annotations

from app.queue import QUEUE, TASK_NAME, JobQueue, make_celery
from app.settings import get_settings

__all__ = ["QUEUE", "TASK_NAME", "celery_app", "queue"]

celery_app = make_celery(get_settings(), include=("worker.tasks",))
queue = JobQueue(get_settings(), celery_app)
