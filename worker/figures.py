"""Figures for classification results, rendered with matplotlib's Agg canvas to PNG bytes.

No pyplot: each call builds its own Figure on its own canvas, so nothing global is touched
and calls are safe from worker threads. Nothing is written to disk; the caller stores the
bytes (e.g. as a job artifact).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import torch

__all__ = ["roc_curve_png", "confusion_matrix_png", "loss_curves_png", "sample_grid_png", "distance_histogram_png",
           "pairs_grid_png"]

DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def roc_curve_png(fpr: Sequence[float], tpr: Sequence[float], auc: float | None, title: str = "ROC curve") -> bytes:
    """ROC curve (as the paper's Figures 5-8) with the chance diagonal and the AUC in the legend."""
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    label = "ROC" if auc is None else f"ROC (AUC = {auc:.3f})"
    ax.plot(list(fpr), list(tpr), color="tab:blue", lw=2, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_matrix_png(matrix_percent: Sequence[Sequence[float]], title: str = "Confusion matrix",
                         class_names: Sequence[str] = ("IDC-", "IDC+")) -> bytes:
    """2x2 (or kxk) matrix in percent, rows true class, columns predicted (Tables 4-7)."""
    values = [[float(v) for v in row] for row in matrix_percent]
    k = len(values)
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(100.0 / k, max(max(r) for r in values)))
    fig.colorbar(image, ax=ax, label="% of samples")
    top = max(max(r) for r in values)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{values[i][j]:.1f}%", ha="center", va="center",
                    color="white" if values[i][j] > 0.6 * top else "black", fontsize=12)
    names = list(class_names)[:k]
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _png(fig)


def loss_curves_png(history: Sequence[dict], keys: Sequence[str] = ("train_loss",), title: str = "Training curves",
                    x_label: str = "epoch") -> bytes:
    """One line per key over the rows of `history` (one dict per epoch, or per step for the GAN:
    `x_label` names which; an "epoch" key gives the x axis when present, else 1..n). Keys missing
    from every row are skipped."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for key in keys:
        points = [(row.get("epoch", i + 1), row[key]) for i, row in enumerate(history) if row.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=key)
    ax.set(xlabel=x_label, title=title)
    if ax.has_data():
        ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def sample_grid_png(images: list[torch.Tensor]) -> bytes:
    """One PNG: a row per scale (4 ... 64 px, each shown at 64 px, nearest) of the fixed latents."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    size = images[-1].shape[-1]
    rows = [torch.nn.functional.interpolate(x, size=(size, size), mode="nearest") for x in images]
    grid = make_grid(torch.cat(rows), nrow=len(images[0]), padding=2, normalize=True, value_range=(-1, 1))
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def distance_histogram_png(synthetic: Sequence[float], holdout: Sequence[float], threshold: float,
                           title: str = "Nearest training patch") -> bytes:
    """Two distance distributions (synthetic -> train, holdout -> train) and the flag threshold."""
    import numpy as np

    fig = Figure(figsize=(6.4, 3.6), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    both = np.concatenate([np.asarray(synthetic, float), np.asarray(holdout, float)])
    bins = np.linspace(0.0, float(np.quantile(both, 0.995)) * 1.05 + 1e-9, 60)
    ax.hist(holdout, bins=bins, alpha=0.55, density=True, label=f"real holdout (n={len(holdout)})")
    ax.hist(synthetic, bins=bins, alpha=0.55, density=True, label=f"synthetic (n={len(synthetic)})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="flag threshold (holdout 1st pct.)")
    ax.set_xlabel("distance to the nearest training patch")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def pairs_grid_png(left_u8, right_u8, size: int = 64) -> bytes:  # noqa: ANN001
    """Two rows of patches, each column a pair (top: synthetic, bottom: its nearest training
    patch), every patch shown at `size` px."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    def tiles(u8) -> torch.Tensor:  # noqa: ANN001
        x = torch.as_tensor(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float() / 255.0
        return torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")

    grid = make_grid(torch.cat([tiles(left_u8), tiles(right_u8)]), nrow=len(left_u8), padding=2, pad_value=1.0)
    buf = io.BytesIO()
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
