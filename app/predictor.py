"""The promoted classifier, loaded once per API process, serving micro-batched predictions.

Concurrent requests put their images on one queue; a single batcher task takes what arrived
within `max_wait_ms` (up to `max_batch` images), runs one forward pass in a worker thread
(torch releases the GIL) and hands each request its probabilities.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from app.db import session_scope
from app.problems import Problem
from app.settings import Settings
from app.tables import ModelVersion


@dataclass
class LoadedModel:
    id: str
    version: int
    model: Any
    input_size: int


class Predictor:
    def __init__(self, settings: Settings, max_batch: int = 32, max_wait_ms: float = 4.0, recheck_s: float = 5.0):
        self.settings = settings
        self.max_batch, self.max_wait, self.recheck_s = max_batch, max_wait_ms / 1000, recheck_s
        self._loaded: LoadedModel | None = None
        self._checked_at = 0.0
        self._load_lock = threading.Lock()
        self._queue: asyncio.Queue | None = None
        self._batcher: asyncio.Task | None = None

    def status(self) -> dict[str, Any]:
        m = self._loaded
        return {"loaded": m is not None, "model_id": m.id if m else None, "version": m.version if m else None}

    def invalidate(self) -> None:
        self._checked_at = 0.0

    def _current(self) -> LoadedModel:
        """The promoted classifier; re-checked every few seconds so a promotion made through
        another API process is picked up too."""
        now = time.monotonic()
        if self._loaded is not None and now - self._checked_at < self.recheck_s:
            return self._loaded
        with self._load_lock:
            with session_scope(self.settings.resolved_database_url) as s:
                row = s.scalar(select(ModelVersion).where(ModelVersion.kind == "classifier",
                                                          ModelVersion.promoted.is_(True)).limit(1))
                if row is None:
                    raise Problem(409, "No classifier is promoted",
                                  "Train one with a train_classifier job (POST /v1/jobs), then promote it with "
                                  "POST /v1/models/{id}/promote.")
                row_id, version, path = row.id, row.version, row.path
            if self._loaded is None or self._loaded.id != row_id:
                from models.classifier import load_classifier

                try:
                    model, config = load_classifier(path)
                except (OSError, ValueError, RuntimeError) as exc:
                    raise Problem(503, "Classifier could not be loaded", f"model {row_id}: {exc}") from exc
                self._loaded = LoadedModel(row_id, version, model, config.input_size)
            self._checked_at = now
            return self._loaded

    def forward(self, loaded: LoadedModel, images: list[np.ndarray]) -> np.ndarray:
        """One batched forward pass: P(IDC+) per image (each image preprocessed on its own, since
        sizes may differ, with the transform training used)."""
        import torch

        from models.classifier import preprocess

        with torch.inference_mode():
            x = torch.cat([preprocess(torch.from_numpy(np.ascontiguousarray(im))[None], loaded.input_size)
                           for im in images])
            return torch.softmax(loaded.model(x).float(), dim=1)[:, 1].numpy()

    async def predict(self, images: list[np.ndarray]) -> tuple[LoadedModel, np.ndarray]:
        loaded = await asyncio.to_thread(self._current)
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._batcher = asyncio.create_task(self._run())
        loop = asyncio.get_running_loop()
        futures = []
        for im in images:
            fut = loop.create_future()
            await self._queue.put((loaded, im, fut))
            futures.append(fut)
        return loaded, np.array(await asyncio.gather(*futures))

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while len(batch) < self.max_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            # Items of one batch share a model; a promotion mid-batch splits it by model.
            for loaded in {id(b[0]): b[0] for b in batch}.values():
                items = [b for b in batch if b[0] is loaded]
                try:
                    probs = await asyncio.to_thread(self.forward, loaded, [b[1] for b in items])
                    for (_, _, fut), p in zip(items, probs):
                        if not fut.done():
                            fut.set_result(float(p))
                except Exception as exc:  # noqa: BLE001 - delivered to the waiting requests
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
