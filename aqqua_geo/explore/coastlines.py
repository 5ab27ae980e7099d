"""Land outlines for the page's small world map, from the bundled Natural Earth shapefile.

The 1:110m admin-0 countries are dissolved into land, simplified with shapely and flattened to
``[lon0, lat0, lon1, lat1, ...]`` rings (≈ 40 kB of JSON), drawn by the page on a canvas in an
equirectangular projection.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def land_rings(tolerance_deg: float = 0.2, decimals: int = 2) -> list[list[float]]:
    """Exterior rings of the world's land polygons as flat lon/lat lists."""
    import geopandas as gpd
    from shapely.geometry import MultiPolygon, Polygon

    from aqqua_geo import data

    folder = data.path("ne_110m_admin_0_countries")
    countries = gpd.read_file(folder / "ne_110m_admin_0_countries.shp")
    land = countries.geometry.union_all().simplify(tolerance_deg, preserve_topology=True)
    polygons = land.geoms if isinstance(land, MultiPolygon) else [land] if isinstance(land, Polygon) else []
    rings = []
    for poly in polygons:
        for ring in [poly.exterior, *poly.interiors]:
            coords = [round(v, decimals) for xy in ring.coords for v in xy]
            if len(coords) >= 8:  # at least a triangle, closed
                rings.append(coords)
    return rings


def land_geojson(tolerance_deg: float = 0.2) -> dict:
    """The land rings as a compact JSON document for the page."""
    return {"crs": "EPSG:4326", "source": "Natural Earth 1:110m admin-0 countries (public domain)",
            "rings": land_rings(tolerance_deg)}
