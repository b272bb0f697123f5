"""dvkit: customized text-to-video generation with DreamVideo subject and motion adapters.

Importing the package is cheap: heavy libraries (torch, diffusers) load only inside the
functions that need them.
"""

from dvkit.catalog import Catalog
from dvkit.errors import DvkitError

__version__ = "0.1.0"

__all__ = ["Catalog", "DvkitError", "__version__"]
