"""The promoted classifier, loaded once per API process, serving micro-batched predictions.

Concurrent requests put their images on one queue. A single batcher task takes the first
image, then everything else already waiting (up to `max_batch`), and runs one forward pass in
one dedicated inference thread (torch releases the GIL). It never waits on a timer: an idle
model starts at once, so one client pays no batching delay, and images that arrive while a
forward pass runs simply form the next, larger batch.

Why one dedicated thread, which also loads the model, and not asyncio.to_thread: with GNU
OpenMP every OS thread that runs torch ops gets its own team of worker threads, and once the
process holds more OpenMP threads than cores, libgomp stops spinning between parallel regions
and puts workers to sleep, so each of a forward's ~60 ops pays a wake-up. Measured on 2 cores
at 224 px (bench/predict.py): single-client latency 20 ms with one team, 27 ms once forwards had
run on several executor threads (after a burst of load) or the model was loaded on a thread
other than the one running forwards.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from app import model_registry
from app.db import session_scope
from app.metrics import PREDICTION_BATCH
from app.problems import Problem
from app.settings import Settings
from app.storage import Storage, StorageError

log = logging.getLogger("histosynth.predictor")


@dataclass
class LoadedModel:
    id: str
    version: int
    runner: Any  # models.inference.InferenceModel
    starter: bool = False


class Predictor:
    def __init__(self, settings: Settings, recheck_s: float = 5.0, storage: Storage | None = None):
        self.settings = settings
        self.storage = storage or Storage.from_settings(settings)
        self.max_batch, self.precision = settings.predict_max_batch, settings.predict_precision
        self.recheck_s = recheck_s
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent forward-pass sizes (tests read them)
        self._loaded: LoadedModel | None = None
        self._checked_at = 0.0
        self._load_lock = threading.Lock()
        self._queue: asyncio.Queue | None = None
        self._batcher: asyncio.Task | None = None
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="histosynth-inference")

    def status(self) -> dict[str, Any]:
        m = self._loaded
        return {"loaded": m is not None, "model_id": m.id if m else None, "version": m.version if m else None,
                "precision": self.precision, "device": str(m.runner.device) if m else None}

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
                row = model_registry.promoted(s, "classifier")
                if row is None:
                    raise Problem(409, "No classifier is promoted",
                                  "Train one with a train_classifier job (POST /v1/jobs), then promote it with "
                                  "POST /v1/models/{id}/promote.")
                row_id, version, key = row.id, row.version, row.key
                starter = bool((row.metrics or {}).get("starter"))
            if self._loaded is None or self._loaded.id != row_id:
                from models.classifier import load_classifier
                from models.inference import InferenceModel

                try:
                    model, config = load_classifier(self.storage.local_path(key))
                    runner = InferenceModel(model, config.input_size, self.precision, self._device())
                except (OSError, ValueError, RuntimeError, StorageError) as exc:
                    # The reason (paths, store endpoints) goes to the log, not to the client.
                    log.error("promoted classifier %s could not be loaded: %s", row_id, exc, exc_info=True)
                    raise Problem(503, "Classifier could not be loaded",
                                  f"The promoted classifier (model {row_id}) could not be loaded; the reason is in "
                                  "the API log under this request_id.", headers={"Retry-After": "30"}) from exc
                self._loaded = LoadedModel(row_id, version, runner, starter)
            self._checked_at = now
            return self._loaded

    def _device(self) -> str:
        from models.device import DeviceUnavailableError, resolve_device

        try:
            return resolve_device(self.settings.predict_device)
        except DeviceUnavailableError as exc:
            raise Problem(503, "Classifier could not be loaded",
                          "HISTOSYNTH_PREDICT_DEVICE=cuda, but this API process sees no GPU; "
                          "use auto or cpu, or give the API container a GPU.") from exc

    def forward(self, loaded: LoadedModel, images: list[np.ndarray]) -> np.ndarray:
        """One forward pass over `images` (uint8 (H, W, 3), any sizes): P(IDC+) per image."""
        import torch

        return loaded.runner.probabilities([torch.from_numpy(np.ascontiguousarray(im)) for im in images]).numpy()

    async def predict(self, images: list[np.ndarray]) -> tuple[LoadedModel, np.ndarray]:
        loaded = self._loaded
        if loaded is None or time.monotonic() - self._checked_at >= self.recheck_s:
            # A database read, maybe a model load: on the inference thread too (see module doc).
            loaded = await asyncio.get_running_loop().run_in_executor(self._inference, self._current)
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
            batch = [await self._queue.get()]
            await asyncio.sleep(0)  # let requests parsed in this same loop turn enqueue too
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Items of one batch share a model; a promotion mid-batch splits it by model.
            for loaded in {id(b[0]): b[0] for b in batch}.values():
                items = [b for b in batch if b[0] is loaded]
                self.batch_sizes.append(len(items))
                PREDICTION_BATCH.observe(len(items))
                try:
                    probs = await asyncio.get_running_loop().run_in_executor(
                        self._inference, self.forward, loaded, [b[1] for b in items])
                    for (_, _, fut), p in zip(items, probs):
                        if not fut.done():
                            fut.set_result(float(p))
                except Exception as exc:  # noqa: BLE001 - delivered to the waiting requests
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
