"""recall: cron-driven offline batch recall (ALS + FAISS) publishing Parquet recall tables."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "read_table", "published_dates"]


def __getattr__(name: str):
    # the reader API, imported on first use so `recall --help` stays quick
    if name in ("read_table", "published_dates"):
        from recall.store import reader

        return getattr(reader, name)
    raise AttributeError(name)
