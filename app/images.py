"""Decoding uploaded patches (PNG/JPEG) for predictions: every bad file is a clear 4xx,
every valid but unusual image (grayscale, RGBA, palette, 16-bit, EXIF-rotated, any size)
becomes an RGB uint8 array."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.problems import Problem

FORMATS = ("PNG", "JPEG")


def _open(data: bytes, filename: str, max_pixels: int) -> Image.Image:
    """Open (header only: nothing is decoded yet) and check the declared size."""
    if not data:
        raise Problem(422, "Empty file", f"{filename!r} is empty.", filename=filename)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Problem(413, "Image too large", f"{filename!r}: {exc}", filename=filename) from exc
    except UnidentifiedImageError as exc:
        raise Problem(415, "Not a PNG or JPEG image", f"{filename!r} is not a PNG or JPEG image.",
                      filename=filename) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise Problem(422, "Corrupt or truncated image", f"{filename!r} could not be read: {exc}",
                      filename=filename) from exc
    width, height = img.size
    if width * height > max_pixels:
        raise Problem(413, "Image too large",
                      f"{filename!r} declares {width}x{height} pixels; the limit is {max_pixels} "
                      "(HISTOSYNTH_MAX_IMAGE_PIXELS).", filename=filename)
    return img


def declared_pixels(data: bytes, filename: str, max_pixels: int) -> int:
    """Width x height from the header, for the per-request pixel budget. Raises Problem (4xx)."""
    width, height = _open(data, filename, max_pixels).size
    return width * height


def decode_upload(data: bytes, filename: str, max_pixels: int, max_side: int | None = None) -> np.ndarray:
    """bytes -> uint8 (H, W, 3). Raises Problem (4xx) naming the file and what is wrong.

    With `max_side`, a larger image is shrunk to that long side while still 8-bit (JPEG even
    decodes at a reduced scale via draft mode), so no full-size float copy ever exists."""
    img = _open(data, filename, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if max_side is not None and max(img.size) > max_side and img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Problem(413, "Image too large", f"{filename!r}: {exc}", filename=filename) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise Problem(422, "Corrupt or truncated image", f"{filename!r} could not be decoded: {exc}",
                      filename=filename) from exc
    img = ImageOps.exif_transpose(img)
    if max_side is not None and max(img.size) > max_side and img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) greyscale: scale the full range to 8 bits, not clip it.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels are shown over white, the colour of an empty slide.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.array(img.convert("RGB"))  # owned and writable: torch.from_numpy warns on read-only views
