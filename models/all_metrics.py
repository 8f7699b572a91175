"""Every built-in metric, registered: import this module, then `compute` by name.

Registration happens on import of the modules below (models/metric_registry.py is the
mechanism); a new metric module is added to this list.
"""

from __future__ import annotations

import models.classification_metrics  # noqa: F401 - registers "classification"
import models.fidelity  # noqa: F401 - registers "fid", "kid", "precision_recall", "density_coverage"
from models.metric_registry import METRICS, compute, names

__all__ = ["METRICS", "compute", "names"]
