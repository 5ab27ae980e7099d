"""Imported by each Dask worker of a parallel ingest as it starts (``distributed.worker.preload``):
the modules a chunk needs, loaded while the client counts the records."""

import aqqua_geo.ingest.ecotaxa  # noqa: F401
import aqqua_geo.ingest.folder  # noqa: F401
import aqqua_geo.ingest.ifcb  # noqa: F401
import aqqua_geo.ingest.runner  # noqa: F401
import aqqua_geo.store.commit  # noqa: F401
import aqqua_geo.store.writer  # noqa: F401
