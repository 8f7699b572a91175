"""Figures come back as valid PNG bytes."""

from __future__ import annotations

import io

from PIL import Image

from worker.figures import confusion_matrix_png, loss_curves_png, roc_curve_png


def decode(data: bytes) -> Image.Image:
    assert isinstance(data, bytes) and data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.width > 0 and image.height > 0
    return image


def test_roc_png():
    decode(roc_curve_png([0, 0.1, 0.4, 1], [0, 0.6, 0.9, 1], 0.85, "TRTR"))
    decode(roc_curve_png([0, 1], [0, 1], None, "no auc"))


def test_confusion_matrix_png():
    decode(confusion_matrix_png([[30.0, 10.0], [20.0, 40.0]], "TRTR"))


def test_loss_curves_png():
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e} for e in range(1, 6)]
    decode(loss_curves_png(history, ["train_loss", "val_loss", "absent"]))
    decode(loss_curves_png([], ["train_loss"]))
