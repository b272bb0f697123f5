"""The local catalog of bases, adapters, runs and evaluations."""

from dvkit.catalog.store import Catalog, GcReport, ImportResult, VerifyReport

__all__ = ["Catalog", "GcReport", "ImportResult", "VerifyReport"]
