"""intake 2 reader for Copernicus Marine datasets, used by ``catalogs/aqqua.yaml`` entries.

The reader defers to :func:`aqqua_geo.mapping.env.open_copernicus`, so catalog reads get the
same offline check, credential handling and error messages as ``open_env("copernicus:...")``.
"""

from __future__ import annotations

from typing import Any

from intake.readers.readers import BaseReader


class CopernicusMarineReader(BaseReader):
    """Lazy ``xarray.Dataset`` from a Copernicus Marine ARCO dataset (``dataset_id`` kwarg)."""

    imports = {"copernicusmarine", "xarray"}
    output_instance = "xarray:Dataset"
    func = "copernicusmarine:open_dataset"

    def _read(self, dataset_id: str, variables: list[str] | None = None, **kwargs: Any) -> Any:
        from aqqua_geo.mapping.env import open_copernicus

        return open_copernicus(dataset_id, variables=variables, raw=True, **kwargs)
