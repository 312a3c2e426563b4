"""textdiff: text diffusion language models (Gaussian embedding diffusion and [MASK]-absorbing
diffusion), trained with accelerate and rounded with FAISS.

Three floors, none importing a higher one: :mod:`textdiff.diffusion` (the math, torch only),
:mod:`textdiff.models` (the network, tokenizer and pipeline) and :mod:`textdiff.infra` (configs,
data, trainer, checkpoints, evaluation, command line). Importing the package is cheap; the public
names load their modules on first use.

``import textdiff`` also makes ``transformers``' ``AutoConfig`` / ``AutoModel`` load saved
textdiff models, without importing torch or transformers itself: when transformers' Auto modules
are imported (now or later), textdiff's network module is imported and registers its classes.
"""

from __future__ import annotations

import importlib
import sys

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


# ------------------------------------------------------------ transformers' Auto classes

_AUTO_MODULES = (
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.modeling_auto",
)


def _register_auto_classes() -> None:
    """Register textdiff's config and model with transformers' Auto classes. The network module
    registers itself when imported; one still being imported registers at its end."""
    try:
        modeling = sys.modules.get("textdiff.models.modeling")
        if modeling is None:
            importlib.import_module("textdiff.models.modeling")
        elif hasattr(modeling, "register_auto_classes"):
            modeling.register_auto_classes()
    except Exception as e:  # never break the user's `import transformers` over this
        import logging

        # an ImportError here is transformers still importing itself (an Auto module loaded by
        # another transformers module): textdiff.models.modeling registers itself once imported
        level = logging.DEBUG if isinstance(e, ImportError) else logging.WARNING
        logging.getLogger(__name__).log(
            level,
            "could not register textdiff with transformers' Auto classes (%s); import "
            "textdiff.models.modeling before loading a textdiff model with them",
            e,
        )


class _RegisteringLoader:
    """Runs a module's own loader, then :func:`_register_auto_classes`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _register_auto_classes()

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class _AutoClassesHook:
    """A ``sys.meta_path`` finder that hands transformers' two Auto modules, when they are first
    imported, a loader that registers textdiff's classes once the module is complete."""

    def find_spec(self, name: str, path=None, target=None):
        if name not in _AUTO_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


if any(name in sys.modules for name in _AUTO_MODULES):
    _register_auto_classes()  # transformers' Auto classes are already there: register now
elif not any(isinstance(f, _AutoClassesHook) for f in sys.meta_path):
    sys.meta_path.insert(0, _AutoClassesHook())
