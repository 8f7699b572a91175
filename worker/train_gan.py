"""The train_gan job: one MSG-GAN per label (as the paper trains one model per class),
checkpointed atomically and resumed from the newest valid checkpoint after a crash."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from app.db import session_scope
from app.packed import LabelView, open_patches, read_index
from app.tables import Dataset, ModelVersion
from models.gan_speed import TrainSpeed
from models.gan_trainer import GanTrainer
from models.msggan import config_from
from worker.context import JobAborted, JobContext, Outcome, UserError, stable_id
from worker.figures import loss_curves_png, sample_grid_png
from worker.models_store import has_promoted, load_state, next_version, pick_device, save_state

KEEP_CHECKPOINTS = 3


def holdout_patients(patients: np.ndarray, fraction: float, seed: int) -> list[str]:
    """A seeded share of the dataset's patients kept out of GAN training (none for 0), so an
    audit can compare the generator's samples with patients it never saw."""
    if fraction <= 0:
        return []
    unique = sorted(set(patients.tolist()))
    k = max(1, round(fraction * len(unique)))
    if k >= len(unique):
        raise UserError(f"holdout_fraction={fraction} leaves no patient of {len(unique)} for training")
    order = np.random.default_rng(seed).permutation(len(unique))
    return sorted(unique[i] for i in order[:k])


def _checkpoints(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}-step*.pt"), key=lambda p: int(p.stem.rsplit("step", 1)[1]), reverse=True)


def _resume(trainer: GanTrainer, folder: Path, name: str) -> int:
    """Load the newest checkpoint that loads; a torn or foreign one is skipped, not fatal."""
    for path in _checkpoints(folder, name):
        try:
            trainer.load_state_dict(load_state(path))
            return trainer.step
        except Exception:  # noqa: BLE001 - try the next older one
            continue
    return 0


def handle_train_gan(ctx: JobContext) -> Outcome:
    p = ctx.params
    with session_scope(ctx.db_url) as s:
        dataset = s.get(Dataset, p["dataset_id"])
        if dataset is None:
            raise UserError(f"dataset {p['dataset_id']} no longer exists")
        folder = Path(dataset.path)
    patches, index = open_patches(folder), read_index(folder)
    holdout = holdout_patients(index["patient"], float(p.get("holdout_fraction", 0.0)), int(p.get("holdout_seed", 0)))
    in_training = ~np.isin(index["patient"], holdout)
    device = pick_device(p.get("device", "auto"))
    labels: list[int] = p["labels"]
    steps, ckpt_every, sample_every = p["steps"], p["checkpoint_every"], p["sample_every"]
    ckpt_dir = ctx.work_dir() / "checkpoints"
    models_dir = ctx.storage.model_dir()
    rows, result_models, metrics = [], {}, {}
    for li, label in enumerate(labels):
        name = f"label{label}"
        config = config_from(p["preset"], p.get("overrides") or {})
        label_rows = np.flatnonzero((index["label"] == label) & in_training)
        if len(label_rows) < config.batch_size:
            raise UserError(f"label {label} keeps {len(label_rows)} patches after the holdout; training needs "
                            f"batch_size={config.batch_size}")
        view = LabelView(patches, label_rows)
        trainer = GanTrainer(config, view, device=device, speed=TrainSpeed.from_dict(p.get("speed")))
        resumed_from = _resume(trainer, ckpt_dir, name)
        started, start_step = time.perf_counter(), trainer.step

        def progress(step: int, total: int, stats: dict, li=li, name=name) -> None:
            ctx.progress(li * steps + step, len(labels) * steps, f"{name} step {step}/{total}",
                         metrics={**metrics, name: {"step": step, **{k: round(v, 5) for k, v in stats.items()}}})

        def checkpoint(tr: GanTrainer, name=name) -> None:
            path = ckpt_dir / f"{name}-step{tr.step:07d}.pt"
            save_state(path, tr.state_dict())
            ctx.add_checkpoint(name, tr.step, path)
            for old in _checkpoints(ckpt_dir, name)[KEEP_CHECKPOINTS:]:
                old.unlink(missing_ok=True)

        def samples(step: int, images: list[torch.Tensor], name=name) -> None:
            ctx.add_artifact(f"samples/{name}/step{step:07d}.png", "image/png", sample_grid_png(images))

        finished = trainer.train(steps, progress_fn=progress, abort_fn=ctx.should_abort, checkpoint_fn=checkpoint,
                                 checkpoint_every=ckpt_every, sample_fn=samples, sample_every=sample_every)
        trainer.close()
        if not finished:
            raise JobAborted("cancelled")
        if trainer.step % max(ckpt_every, 1) != 0 or ckpt_every == 0:
            checkpoint(trainer)
        samples(trainer.step, trainer.sample_fixed())
        history = trainer.history
        ctx.add_artifact(f"loss_curves_{name}.png", "image/png",
                         loss_curves_png(history, keys=("d_loss", "g_loss", "gp", "wasserstein"),
                                         title=f"MSG-GAN losses, {name}"))
        ctx.add_artifact(f"loss_history_{name}.json", "application/json", json.dumps(history).encode())
        model_id = stable_id(ctx.job_id, "generator", name)
        path = models_dir / f"{model_id}.pt"
        save_state(path, {"kind": "generator", "label": label, "config": config.to_dict(),
                          "state_dict": trainer.ema_generator_state()})
        elapsed = time.perf_counter() - started
        last = history[-1] if history else {}
        metrics[name] = {"step": trainer.step, "resumed_from_step": resumed_from,
                         "s_per_step": round(elapsed / max(trainer.step - start_step, 1), 4),
                         "speed": trainer.speed.describe(),
                         **{k: round(v, 5) for k, v in last.items()}}
        with session_scope(ctx.db_url) as s:
            version = next_version(s, "generator", label)
            promote = not has_promoted(s, "generator", label)
        rows.append(ModelVersion(id=model_id, kind="generator", label=label, version=version, job_id=ctx.job_id,
                                 path=str(path), config={**config.to_dict(), "preset": p["preset"],
                                                         "dataset_id": p["dataset_id"], "steps": steps,
                                                         "train_patients": sorted(set(index["patient"][label_rows].tolist())),
                                                         "holdout_patients": holdout,
                                                         "holdout_fraction": float(p.get("holdout_fraction", 0.0))},
                                 metrics=metrics[name], promoted=promote))
        result_models[str(label)] = model_id
    return Outcome(result={"model_ids": result_models, "dataset_id": p["dataset_id"], "steps": steps,
                           "device": device}, metrics=metrics, rows=rows)
