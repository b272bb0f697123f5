"""dvkit: customized text-to-video generation with DreamVideo subject and motion adapters.

Importing the package is cheap: heavy libraries (torch, diffusers) load only when a function
that needs them is first used (`dvkit.add_subject`, `dvkit.add_motion`, `dvkit.add_base`,
`dvkit.compose`, `dvkit.bench`, `dvkit.run_demo`).
"""

from typing import Any

from dvkit.catalog import Catalog
from dvkit.errors import DvkitError

__version__ = "0.1.0"

_LAZY = {
    "add_subject": "dvkit.train.api",
    "add_motion": "dvkit.train.api",
    "add_base": "dvkit.bases",
    "set_default_base": "dvkit.bases",
    "base_pipeline": "dvkit.bases",
    "compose": "dvkit.generate.compose",
    "score": "dvkit.evaluate.score",
    "bench": "dvkit.evaluate.grid",
    "run_demo": "dvkit.sprites.demo",
}

__all__ = ["Catalog", "DvkitError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dvkit' has no attribute {name!r}")
