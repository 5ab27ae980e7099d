"""PNG maps render offline with the bundled Natural Earth coastlines."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np
import pytest
import xarray as xr

from aqqua_geo.mapping import plotting


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _field() -> xr.DataArray:
    lat = np.arange(-89.5, 90, 2.0)
    lon = np.arange(-179.5, 180, 2.0)
    v = np.cos(np.radians(lat))[:, None] * np.ones(lon.size) + 0.01
    return xr.DataArray(v, coords={"lat": lat, "lon": lon}, dims=("lat", "lon"), name="b",
                        attrs={"long_name": "biomass", "units": "mg m-3"})


@pytest.mark.parametrize("projection, log", [("Robinson", True), ("PlateCarree", False)])
def test_plot_map_with_coastlines_offline(tmp_path, no_network, projection, log):
    import cartopy

    png = plotting.plot_map(_field(), tmp_path / "m.png", projection=projection, log=log,
                            points=(np.array([0.0, 10.0]), np.array([0.0, 5.0])))
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    assert cartopy.config["pre_existing_data_dir"].endswith("natural_earth")


def test_bundled_coastlines_cover_the_continents():
    import cartopy.io.shapereader as shpreader

    plotting.use_offline_natural_earth()
    path = shpreader.natural_earth(resolution="110m", category="physical", name="coastline")
    geoms = list(shpreader.Reader(path).geometries())
    assert len(geoms) > 100
    lons = np.concatenate([np.asarray(g.coords)[:, 0] for g in geoms])
    assert lons.min() < -170 and lons.max() > 170


def test_build_natural_earth_is_reproducible(tmp_path):
    import geopandas as gpd

    land, coast = plotting.build_natural_earth(tmp_path)
    bundled = plotting.use_offline_natural_earth() / "shapefiles/natural_earth/physical"
    a, b = gpd.read_file(land), gpd.read_file(bundled / "ne_110m_land.shp")
    assert len(a) == len(b) and a.union_all().equals_exact(b.union_all(), 1e-9)
    assert gpd.read_file(coast).geom_type.eq("LineString").all()


def test_plot_map_rejects_3d_and_bad_projection(tmp_path):
    da = _field().expand_dims(time=2)
    with pytest.raises(ValueError, match="also has dims"):
        plotting.plot_map(da, tmp_path / "x.png")
    with pytest.raises(ValueError, match="projection"):
        plotting.plot_map(_field(), tmp_path / "x.png", projection="Mercator")
    assert not (tmp_path / "x.png").exists()


def test_plot_products_one_png_per_variable(tmp_path):
    f = _field()
    ds = xr.Dataset({"b_mean": f, "b_std": f * 0.1})
    pngs = plotting.plot_products(ds, tmp_path, log_vars=("b",))
    assert sorted(p.name for p in pngs) == ["b_mean.png", "b_std.png"]


def test_log_colour_bar_ticks_are_few_and_plain():
    assert plotting.log_ticks(0.1, 20.0) == [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0]
    wide = plotting.log_ticks(1e-3, 1e4)
    assert len(wide) <= 8 and all(np.isclose(np.log10(t) % 1, 0) for t in wide)
    assert [f"{t:g}" for t in plotting.log_ticks(1.0, 100.0)] == ["1", "2", "5", "10", "20", "50", "100"]
    with pytest.raises(ValueError):
        plotting.log_ticks(0.0, 1.0)
