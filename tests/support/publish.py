"""Tables staged and published through the commit protocol, as an engine does, without a run."""
from __future__ import annotations

import pyarrow as pa

from recall.store.commit import Publication
from recall.store.layout import JobDir
from recall.store.records import Manifest, TableInfo
from recall.store.tables import TableWriter

SCHEMA = pa.schema([("item_id", pa.int64()), ("score", pa.float32()), ("rank", pa.int32())])


def rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({"item_id": pa.array(range(start, start + n), pa.int64()),
                     "score": pa.array([1.0] * n, pa.float32()), "rank": pa.array(range(1, n + 1), pa.int32())})


def stage(job: JobDir, run_id: str, date: str, n: int, tables=("popular",), seal: bool = False) -> Publication:
    """Write `tables` of a run into its staging folder (sealed when asked)."""
    publication = Publication(job, run_id, date)
    for table in tables:
        w = TableWriter(publication.folder(table), SCHEMA, 10_000, 10_000)
        w.write(rows(n))
        w.close()
        if seal:
            publication.seal(table)
    return publication


def release(job: JobDir, run_id: str, date: str, tables=("popular",), keep_days: int = 1000) -> None:
    """Seal and publish what `stage` wrote: the whole commit protocol."""
    publication = Publication(job, run_id, date)
    markers = {table: publication.seal(table) for table in tables}
    manifest = Manifest(job.name, date, run_id, {t: TableInfo(m.rows, m.files) for t, m in markers.items()})
    publication.publish(manifest, keep_days)
