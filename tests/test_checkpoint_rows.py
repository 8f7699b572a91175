"""A GAN checkpoint written but not yet recorded when its worker died (the window between
`put_state` and `add_checkpoint` in worker/train_gan.py) is recorded by the attempt that
resumes from it, so the job's checkpoint list never misses the step it resumed at."""

import numpy as np
import torch

from app import jobs
from app.db import session_scope
from app.migrate import upgrade_head
from app.settings import Settings
from app.storage import Storage
from app.tables import Checkpoint
from models.gan_trainer import GanTrainer
from models.msggan import config_from
from models.snapshot_selection import SnapshotSelection
from tests.conftest import FAST_GAN
from worker.context import JobContext
from worker.models_store import put_state
from worker.train_gan import _Checkpoints


def rows(url: str, job_id: str) -> list[tuple[str, int, str, int]]:
    with session_scope(url) as s:
        found = s.query(Checkpoint).filter_by(job_id=job_id).order_by(Checkpoint.step).all()
        return [(c.name, c.step, c.key, c.size_bytes) for c in found]


def test_resume_records_a_checkpoint_whose_row_the_killed_worker_never_wrote(tmp_path, one_torch_thread):
    settings = Settings(home=tmp_path)
    url = settings.resolved_database_url
    upgrade_head(url)
    with session_scope(url) as s:
        job_id = jobs.create_job(s, "train_gan", {})[0].id
    ctx = JobContext(settings, job_id, "train_gan", {}, "w:1:a", 1)
    patches = np.random.default_rng(0).integers(0, 256, (8, 50, 50, 3), dtype=np.uint8)
    config = config_from("paper", FAST_GAN)
    first = GanTrainer(config, patches)
    ckpts = _Checkpoints(ctx, "label1")
    first.train(2)
    ckpts.save(first)  # recorded: the normal path
    first.train(4)
    # The dead worker's last act: the object is stored, the row is not.
    orphan = f"{Storage.checkpoint_prefix(job_id)}/label1-step0000004.pt"
    size = put_state(ctx.storage, orphan, first.state_dict())
    assert [r[1] for r in rows(url, job_id)] == [2]

    resumed = GanTrainer(config, patches)
    assert _Checkpoints(ctx, "label1").resume(resumed)[0] == 4
    assert rows(url, job_id)[-1] == ("label1", 4, orphan, size)
    # Recording is idempotent: a second resume adds nothing.
    again = GanTrainer(config, patches)
    _Checkpoints(ctx, "label1").resume(again)
    assert [r[1] for r in rows(url, job_id)] == [2, 4]
    for trainer in (first, resumed, again):
        trainer.close()


def test_a_checkpoint_carries_the_snapshot_selection(tmp_path, one_torch_thread):
    settings = Settings(home=tmp_path)
    upgrade_head(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        job_id = jobs.create_job(s, "train_gan", {})[0].id
    ctx = JobContext(settings, job_id, "train_gan", {}, "w:1:a", 1)
    patches = np.random.default_rng(0).integers(0, 256, (8, 50, 50, 3), dtype=np.uint8)
    config = config_from("paper", FAST_GAN)
    trainer = GanTrainer(config, patches)
    selection = SnapshotSelection()
    trainer.train(2)
    selection.observe(2, 7.5, trainer.ema_generator_state())
    trainer.train(4)
    selection.observe(4, 9.0, trainer.ema_generator_state())  # worse: step 2 stays the best
    _Checkpoints(ctx, "label1").save(trainer, selection)
    resumed = GanTrainer(config, patches)
    step, back = _Checkpoints(ctx, "label1").resume(resumed)
    assert step == 4 and back.history == [(2, 7.5), (4, 9.0)] and back.best_step == 2
    assert all(torch.equal(back.best_state[k], selection.best_state[k]) for k in selection.best_state)
    # a checkpoint written without a selection resumes with an empty one
    _Checkpoints(ctx, "label0").save(trainer)
    assert _Checkpoints(ctx, "label0").resume(GanTrainer(config, patches))[1].history == []
    for t in (trainer, resumed):
        t.close()
