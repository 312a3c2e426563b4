"""textdiff: text diffusion language models (Gaussian embedding diffusion and [MASK]-absorbing
diffusion), trained with accelerate and rounded with FAISS.

Three floors, none importing a higher one: :mod:`textdiff.diffusion` (the math, torch only),
:mod:`textdiff.models` (the network, tokenizer and pipeline) and :mod:`textdiff.infra` (configs,
data, trainer, checkpoints, evaluation, command line). Importing the package is cheap; the public
names load their modules on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "TextDiffusionPipeline": "textdiff.models.pipeline",
    "TextDiffusionModel": "textdiff.models.modeling",
    "TextDiffusionConfig": "textdiff.models.modeling",
    "GaussianProcess": "textdiff.diffusion.gaussian",
    "MaskProcess": "textdiff.diffusion.absorbing",
    "Rounder": "textdiff.diffusion.rounding",
    "register_process": "textdiff.diffusion.registry",
    "ProcessSpec": "textdiff.diffusion.registry",
    "TextdiffError": "textdiff.errors",
    "TemplateError": "textdiff.models.template",
    "load_config": "textdiff.infra.config",
    "train": "textdiff.infra.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'textdiff' has no attribute {name!r}")
