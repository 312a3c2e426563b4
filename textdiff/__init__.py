"""textdiff: text diffusion language models (Gaussian embedding diffusion and [MASK]-absorbing
diffusion), trained with accelerate and rounded with FAISS.

Importing the package is cheap; the public names load their modules on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "TextDiffusionPipeline": "textdiff.pipeline",
    "TextDiffusionModel": "textdiff.modeling",
    "TextDiffusionConfig": "textdiff.modeling",
    "GaussianProcess": "textdiff.gaussian",
    "MaskProcess": "textdiff.absorbing",
    "Rounder": "textdiff.rounding",
    "TemplateError": "textdiff.template",
    "load_config": "textdiff.config",
    "train": "textdiff.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'textdiff' has no attribute {name!r}")
