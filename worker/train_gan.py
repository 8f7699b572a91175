"""The train_gan job: one MSG-GAN per label (as the paper trains one model per class),
checkpointed atomically and resumed from the newest valid checkpoint after a crash.

One function per concern: which patches (`_training_data`), the checkpoint folder
(`_Checkpoints`), the best-snapshot scoring when `select_every` asks for it (`_Selector`), the
loop with its progress/sample callbacks (`_train_label`), the figures (`_save_figures`) and
the model file with its version row (`_generator_row`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.db import session_scope
from app.job_kinds import TrainGanParams
from app.packed import LabelView, open_patches, read_index
from app.storage import Storage
from app.tables import Dataset, ModelVersion
from models.gan_speed import TrainSpeed
from models.gan_trainer import GanTrainer
from models.msggan import GanConfig, config_from
from models.sampling import build_generator_from_state
from models.snapshot_selection import SnapshotSelection, scored_steps, snapshot_fid
from worker.context import JobAborted, JobContext, Outcome, UserError, stable_id
from worker.domain_features import load_domain_extractor
from worker.figures import loss_curves_png, sample_grid_png
from worker.models_store import pick_device, put_state, read_state

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


@dataclass
class TrainingData:
    patches: np.ndarray          # the dataset's memmapped (N, 50, 50, 3) uint8 patches
    index: dict[str, np.ndarray]  # per-patch label and patient
    holdout: list[str]            # patients kept out of training
    in_training: np.ndarray       # bool per patch

    def label_rows(self, label: int) -> np.ndarray:
        return np.flatnonzero((self.index["label"] == label) & self.in_training)


def _training_data(ctx: JobContext, p: TrainGanParams) -> TrainingData:
    with session_scope(ctx.db_url) as s:
        dataset = s.get(Dataset, p.dataset_id)
        if dataset is None:
            raise UserError(f"dataset {p.dataset_id} no longer exists")
        key = dataset.key
    folder = ctx.storage.local_tree(key)
    index = read_index(folder)
    holdout = holdout_patients(index["patient"], p.holdout_fraction, p.holdout_seed)
    return TrainingData(open_patches(folder), index, holdout, ~np.isin(index["patient"], holdout))


class _Checkpoints:
    """`{name}-step{step}.pt` objects of one label under the job's checkpoint prefix in the
    store (so a worker on another machine resumes from them); the newest few are kept."""

    def __init__(self, ctx: JobContext, name: str) -> None:
        self.ctx, self.name, self.prefix = ctx, name, Storage.checkpoint_prefix(ctx.job_id)

    def keys(self) -> list[str]:
        mine = [k for k in self.ctx.storage.list(self.prefix) if k.rsplit("/", 1)[1].startswith(f"{self.name}-step")]
        return sorted(mine, key=lambda k: int(k.rsplit("step", 1)[1].removesuffix(".pt")), reverse=True)

    def save(self, trainer: GanTrainer, selection: SnapshotSelection | None = None) -> None:
        """The trainer's state, with the snapshot selection as it stands at this step (so a
        resumed job keeps the best snapshot scored before the crash)."""
        key = f"{self.prefix}/{self.name}-step{trainer.step:07d}.pt"
        state = trainer.state_dict()
        if selection is not None:
            state["selection"] = selection.state_dict()
        size = put_state(self.ctx.storage, key, state)
        self.ctx.add_checkpoint(self.name, trainer.step, key, size)
        for old in self.keys()[KEEP_CHECKPOINTS:]:
            self.ctx.storage.delete(old)

    def resume(self, trainer: GanTrainer) -> tuple[int, SnapshotSelection]:
        """Load the newest checkpoint that loads; a torn or foreign one is skipped, not fatal.
        Returns its step and the snapshot selection saved with it (empty when none was).

        The one loaded is (re)recorded: a worker killed between writing a checkpoint and
        recording its row leaves an object the job resumes from but would never list."""
        for key in self.keys():
            try:
                state = read_state(self.ctx.storage, key)
                trainer.load_state_dict(state)
                selection = SnapshotSelection.from_state(state["selection"]) if "selection" in state else SnapshotSelection()
            except Exception:  # noqa: BLE001 - try the next older one
                continue
            self.ctx.add_checkpoint(self.name, trainer.step, key, self.ctx.storage.size(key))
            return trainer.step, selection
        return 0, SnapshotSelection()


class _Selector:
    """Scores the EMA generator at select_every's steps against the label's own training
    patches (models/snapshot_selection.py) and keeps the best snapshot."""

    def __init__(self, ctx: JobContext, rows: np.ndarray, patches: np.ndarray, selection: SnapshotSelection,
                 seed: int) -> None:
        p: TrainGanParams = ctx.p
        self.points = scored_steps(p.select_start, p.select_every, p.steps)
        self.n, self.size, self.seed, self.selection = p.select_samples, p.select_size, seed, selection
        self.extract = load_domain_extractor(ctx, p.select_classifier_model_id)
        # The reference: a seeded draw of the label's training patches (all of them when fewer).
        pick = np.sort(np.random.default_rng(self.seed).permutation(len(rows))[:self.n])
        self.reference = self.extract(patches[rows[pick]])
        self.seconds = 0.0  # scoring time in this process (part of s_per_step)

    def due(self, step: int) -> bool:
        return step in self.points and step not in dict(self.selection.history)

    def score(self, trainer: GanTrainer) -> float:
        started = time.perf_counter()
        generator = build_generator_from_state(trainer.config.to_dict(), trainer.ema_generator_state())
        fid = snapshot_fid(generator, self.extract, self.reference, self.n, self.seed, size=self.size)
        self.selection.observe(trainer.step, fid, generator.state_dict())
        self.seconds += time.perf_counter() - started
        return fid

    def describe(self) -> dict[str, Any]:
        return {"selected_step": self.selection.best_step, "selected_fid_train": round(self.selection.best_fid, 4),
                "fid_train": {str(step): round(fid, 4) for step, fid in self.selection.history},
                "features": self.extract.identity, "samples": self.n, "size": self.size,
                "reference_patches": len(self.reference),
                "scoring_s": round(self.seconds, 2)}


def _train_label(ctx: JobContext, trainer: GanTrainer, ckpts: _Checkpoints, position: int,
                 metrics: dict[str, Any], selector: _Selector | None) -> None:
    """Run `trainer` to the job's steps with progress, samples, checkpoints and (with a
    `selector`) snapshot scores; raises JobAborted on cancel. `position` is the label's place
    in the job (progress counts over all labels)."""
    p: TrainGanParams = ctx.p
    name, steps, n_labels = ckpts.name, p.steps, len(p.labels)
    selection = selector.selection if selector is not None else None

    def progress(step: int, _segment_end: int, stats: dict) -> None:
        ctx.progress(position * steps + step, n_labels * steps, f"{name} step {step}/{steps}",
                     metrics={**metrics, name: {"step": step, **{k: round(v, 5) for k, v in stats.items()}}})

    def samples(step: int, images: list[torch.Tensor]) -> None:
        ctx.add_artifact(f"samples/{name}/step{step:07d}.png", "image/png", sample_grid_png(images))

    def checkpoint(t: GanTrainer) -> None:
        ckpts.save(t, selection)

    # Trained in segments that end at the scored steps; a checkpoint inside a segment carries
    # the scores before it, and a job resumed exactly at a scored step scores it first.
    ends = sorted({*(selector.points if selector is not None else []), steps})
    for end in [e for e in ends if e >= trainer.step]:
        if selector is not None and selector.due(trainer.step):
            selector.score(trainer)
        if end == trainer.step:
            continue
        finished = trainer.train(end, progress_fn=progress, abort_fn=ctx.should_abort, checkpoint_fn=checkpoint,
                                 checkpoint_every=p.checkpoint_every, sample_fn=samples,
                                 sample_every=p.sample_every)
        if not finished:
            trainer.close()
            raise JobAborted("cancelled")
        if selector is not None and selector.due(trainer.step):
            selector.score(trainer)
    trainer.close()
    if p.checkpoint_every == 0 or trainer.step % p.checkpoint_every != 0:
        ckpts.save(trainer, selection)
    samples(trainer.step, trainer.sample_fixed())
    if selection is not None and selection.best_state is not None and selection.best_step != trainer.step:
        # the model's own grid: the selected snapshot on the same fixed latents (outside
        # samples/, whose grids the dashboard orders by step)
        G = build_generator_from_state(trainer.config.to_dict(), selection.best_state)
        with torch.no_grad():
            images = [x.clamp(-1, 1).contiguous() for x in G(trainer.fixed_z.cpu())]
        ctx.add_artifact(f"selected_snapshot_{name}.png", "image/png", sample_grid_png(images))


def _save_figures(ctx: JobContext, name: str, history: list[dict[str, float]]) -> None:
    ctx.add_artifact(f"loss_curves_{name}.png", "image/png",
                     loss_curves_png(history, keys=("d_loss", "g_loss", "gp", "wasserstein"),
                                     title=f"MSG-GAN losses, {name}", x_label="step"))
    ctx.add_artifact(f"loss_history_{name}.json", "application/json", json.dumps(history).encode())


def _generator_row(ctx: JobContext, label: int, config: GanConfig, trainer: GanTrainer, data: TrainingData,
                   metrics: dict[str, Any], selection: SnapshotSelection | None) -> ModelVersion:
    """Store the EMA generator (the selected snapshot's, with select_every); its version row
    is numbered (and the label's first one promoted) by app.model_registry when the job's
    success is recorded."""
    p: TrainGanParams = ctx.p
    model_id = stable_id(ctx.job_id, "generator", f"label{label}")
    key = Storage.model_key(model_id)
    chosen = selection is not None and selection.best_state is not None
    state = selection.best_state if chosen else trainer.ema_generator_state()
    put_state(ctx.storage, key, {"kind": "generator", "label": label, "config": config.to_dict(), "state_dict": state})
    train_patients = sorted(set(data.index["patient"][data.label_rows(label)].tolist()))
    return ModelVersion(id=model_id, kind="generator", label=label, job_id=ctx.job_id, key=key,
                        config={**config.to_dict(), "preset": p.preset, "dataset_id": p.dataset_id,
                                "steps": p.steps, "selected_step": selection.best_step if chosen else p.steps,
                                "train_patients": train_patients,
                                "holdout_patients": data.holdout, "holdout_fraction": p.holdout_fraction},
                        metrics=metrics)


def handle_train_gan(ctx: JobContext) -> Outcome:
    p: TrainGanParams = ctx.p
    data = _training_data(ctx, p)
    device = pick_device(p.device)
    rows, model_ids, metrics = [], {}, {}
    for position, label in enumerate(p.labels):
        name = f"label{label}"
        config = config_from(p.preset, p.overrides)
        label_rows = data.label_rows(label)
        if len(label_rows) < config.batch_size:
            raise UserError(f"label {label} keeps {len(label_rows)} patches after the holdout; training needs "
                            f"batch_size={config.batch_size}")
        trainer = GanTrainer(config, LabelView(data.patches, label_rows), device=device,
                             speed=TrainSpeed.from_dict(p.speed))
        ckpts = _Checkpoints(ctx, name)
        resumed_from, selection = ckpts.resume(trainer)
        selector = _Selector(ctx, label_rows, data.patches, selection, config.seed) if p.select_every else None
        started, start_step = time.perf_counter(), trainer.step
        _train_label(ctx, trainer, ckpts, position, metrics, selector)
        _save_figures(ctx, name, trainer.history)
        last = trainer.history[-1] if trainer.history else {}
        metrics[name] = {"step": trainer.step, "resumed_from_step": resumed_from,
                         "s_per_step": round((time.perf_counter() - started) / max(trainer.step - start_step, 1), 4),
                         "speed": trainer.speed.describe(), **{k: round(v, 5) for k, v in last.items()}}
        if selector is not None:
            metrics[name]["selection"] = selector.describe()
        rows.append(_generator_row(ctx, label, config, trainer, data, metrics[name],
                                   selector.selection if selector is not None else None))
        model_ids[str(label)] = rows[-1].id
    return Outcome(result={"model_ids": model_ids, "dataset_id": p.dataset_id, "steps": p.steps,
                           "device": device}, metrics=metrics, new_models=rows)
