"""/v1/predictions: classify uploaded patches with the promoted classifier."""

from __future__ import annotations

import asyncio

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.requests import Request as StarletteRequest

from app.api.deps import SettingsDep
from app.admission import client_identity
from app.images import decode_upload, declared_pixels
from app.metrics import PREDICTIONS
from app.problems import Problem

router = APIRouter(prefix="/v1/predictions", tags=["predictions"])


class ModelRef(BaseModel):
    id: str
    version: int
    precision: str  # "fp32" or "bf16" (HISTOSYNTH_PREDICT_PRECISION)
    starter: bool = False  # the shipped starter classifier (app/starter_models.py), not one trained here


class Prediction(BaseModel):
    filename: str
    label: str
    probability_idc: float


class PredictionResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]


async def _capped_body(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise Problem(413, "Request body too large", f"The limit is {cap} bytes (HISTOSYNTH_MAX_PREDICTION_BYTES).")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise Problem(413, "Request body too large", f"The limit is {cap} bytes (HISTOSYNTH_MAX_PREDICTION_BYTES).")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("", response_model=PredictionResponse,
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
async def predict(request: Request, settings: SettingsDep) -> PredictionResponse:
    """multipart/form-data with one or more `files` (PNG or JPEG patches)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Problem(415, "Send multipart/form-data", "Upload patches as multipart form fields named 'files'.")
    body = await _capped_body(request, settings.max_prediction_bytes)

    async def replay():  # noqa: ANN202 - the capped body, handed to Starlette's multipart parser
        return {"type": "http.request", "body": body, "more_body": False}

    cap = settings.max_prediction_files
    try:
        form = await StarletteRequest(request.scope, replay).form(max_files=cap + 1, max_fields=cap + 1)
    except Exception as exc:  # noqa: BLE001 - a malformed multipart body is the client's error
        raise Problem(400, "Malformed multipart body", str(getattr(exc, "detail", exc))) from exc
    uploads = [v for v in form.getlist("files") if isinstance(v, UploadFile)]
    if not uploads:
        raise Problem(422, "No files", "Send one or more images as multipart fields named 'files'.")
    if len(uploads) > cap:
        raise Problem(413, "Too many files", f"{len(uploads)} files; the limit is {cap} (HISTOSYNTH_MAX_PREDICTION_FILES).")
    state = request.app.state
    state.prediction_gate.check_fits(len(uploads))  # a request that can never pass costs no tokens
    state.prediction_limiter.take(client_identity(request), len(uploads))
    blobs = [(up.filename or "upload", await up.read()) for up in uploads]
    names = [name for name, _ in blobs]
    # Headers first (cheap, nothing decoded): one oversized image or too many pixels in all is
    # refused before any decoding work is done.
    declared = sum([declared_pixels(data, name, settings.max_image_pixels) for name, data in blobs])
    if declared > settings.max_request_pixels:
        raise Problem(413, "Too many pixels in one request",
                      f"The images declare {declared} pixels in all; the limit is {settings.max_request_pixels} "
                      "(HISTOSYNTH_MAX_REQUEST_PIXELS). Send fewer or smaller images per request.")
    with state.prediction_gate.admit(len(blobs)):
        # Decoding runs on worker threads, a bounded number at once per process, so the event
        # loop (health checks, other requests) never waits on PIL.
        limiter: anyio.CapacityLimiter = state.decode_limiter
        images = await asyncio.gather(*[
            anyio.to_thread.run_sync(decode_upload, data, name, settings.max_image_pixels, settings.predict_max_side,
                                     limiter=limiter)
            for name, data in blobs])
        loaded, probs = await state.predictor.predict(list(images))
    PREDICTIONS.inc(len(images))
    return PredictionResponse(
        model=ModelRef(id=loaded.id, version=loaded.version, precision=loaded.runner.precision,
                       starter=loaded.starter),
        predictions=[Prediction(filename=n, label="IDC+" if p >= 0.5 else "IDC-", probability_idc=round(float(p), 6))
                     for n, p in zip(names, probs)],
    )
