"""Ingestion of instrument data into an AqQua store.

``ingest(src, store_dir, fmt=...)`` and ``validate(src, fmt=...)`` for EcoTaxa TSV
(``ecotaxa``), raw IFCB bins (``ifcb``) and image folders + a metadata table (``folder``).
"""

from __future__ import annotations

from aqqua_geo.ingest.runner import FORMATS, IngestError, IngestReport, ingest, validate

__all__ = ["FORMATS", "IngestError", "IngestReport", "ingest", "validate"]
