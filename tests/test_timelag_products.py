"""Time-lag products for astronomers: FITS files that open as one sunpy Map each, PNGs on
helioprojective axes, and reruns that never leave an earlier run's pair files behind."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from cloudlab.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A simulated 94/171 series and the command's outputs for it (cropped, 2 channels)."""
    root = tmp_path_factory.mktemp("tl")
    sim, out = root / "sim", root / "out"
    assert main(["timelag", "simulate", str(sim), "--channels", "94,171", "--shape", "8x10",
                 "--frames", "30"]) == 0  # fmt: skip
    argv = ["timelag", "--channel", f"94={sim}/0094/*.fits", "--channel",
            f"171={sim}/0171/*.fits", "--bottom-left", "-402,47.6", "--top-right", "-399,50",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return sim, out, argv


def test_fits_files_open_as_one_sunpy_map_each_with_title_unit_and_wcs(run):
    import sunpy.map
    from sunpy.coordinates import Helioprojective

    sim, out, _ = run
    maps = xr.open_zarr(out / "timelag_maps.zarr").compute()
    first_frame = sunpy.map.Map(sorted((sim / "0094").glob("*.fits"))[0])
    for variable, unit, words in (("timelag", u.s, "time lag [s]"),
                                  ("max_correlation", u.dimensionless_unscaled,
                                   "maximum cross-correlation")):  # fmt: skip
        smap = sunpy.map.Map(out / "fits" / f"{variable}_94_171.fits")
        assert isinstance(smap, sunpy.map.GenericMap)  # one map, not a list
        assert "94-171" in smap.name and words in smap.name and smap.name == smap.latex_name
        assert smap.unit == unit
        np.testing.assert_array_equal(smap.data, maps[variable].sel(pair="94-171").values)
        assert isinstance(smap.coordinate_frame, Helioprojective)
        ours, theirs = smap.observer_coordinate, first_frame.observer_coordinate
        for attr in ("lon", "lat", "radius"):
            assert u.allclose(getattr(ours, attr), getattr(theirs, attr))
        # the crop's pixel (0, 0) is the same sky point as in the input frame
        corner = smap.pixel_to_world(0 * u.pix, 0 * u.pix)
        x, y = first_frame.world_to_pixel(corner)
        ny, nx = smap.data.shape
        sub = first_frame.data[int(round(y.value)) :, int(round(x.value)) :][:ny, :nx]
        assert sub.shape == (ny, nx)
        assert abs(x.value - round(x.value)) < 0.01 and abs(y.value - round(y.value)) < 0.01
    with fits.open(out / "fits" / "timelag_94_171.fits") as hdul:
        assert hdul[0].header["BUNIT"] == "s" and "WAVELNTH" not in hdul[0].header


def test_png_axes_are_helioprojective_with_labelled_colour_bars(run):
    from astropy.visualization.wcsaxes import WCSAxes

    from cloudlab.timelag.output import pair_figure

    _, out, _ = run
    assert (out / "png" / "timelag_94_171.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = xr.open_zarr(out / "timelag_maps.zarr").compute().sel(pair="94-171")
    fig = pair_figure(maps, 60.0)
    panels = [ax for ax in fig.axes if isinstance(ax, WCSAxes)]
    assert len(panels) == 2
    for ax in panels:
        assert ax.coords[0].get_axislabel() == "Helioprojective Longitude [arcsec]"
        assert ax.coords[1].get_axislabel() == "Helioprojective Latitude [arcsec]"
    colour_bars = [ax.get_ylabel() for ax in fig.axes if not isinstance(ax, WCSAxes)]
    assert colour_bars == ["time lag [s]", "maximum cross-correlation"]
    assert [ax.get_title() for ax in panels] == ["time lag 94-171 Å",
                                                 "maximum cross-correlation 94-171 Å"]  # fmt: skip
    lon, lat = panels[0].coords[0], panels[0].coords[1]
    assert lon.get_format_unit() == u.arcsec and lat.get_format_unit() == u.arcsec


def test_rerun_never_leaves_pair_files_of_an_earlier_run(run, tmp_path, capsys):
    import shutil

    sim, _, argv = run
    out = tmp_path / "out"
    argv = [*argv[:-1], str(out)]
    assert main(argv) == 0
    names = lambda d: sorted(p.name for p in (out / d).iterdir())  # noqa: E731
    assert names("png") == ["timelag_94_171.png"]
    # other pairs, the earlier zarr gone: refused before computing, naming the earlier files
    shutil.rmtree(out / "timelag_maps.zarr")
    capsys.readouterr()
    assert main([*argv, "--pairs", "171-94"]) == 2
    err = capsys.readouterr().err
    assert "timelag_94_171.fits" in err and "--overwrite" in err
    assert not (out / "timelag_maps.zarr").exists()  # nothing was written
    assert names("fits") == ["max_correlation_94_171.fits", "timelag_94_171.fits"]
    # with --overwrite the earlier pair's files go, also the PNGs of a --no-png rerun
    assert main([*argv, "--pairs", "171-94", "--no-png", "--overwrite"]) == 0
    assert names("fits") == ["max_correlation_171_94.fits", "timelag_171_94.fits"]
    assert names("png") == []
    maps = xr.open_zarr(out / "timelag_maps.zarr")
    assert list(maps["pair"].values) == ["171-94"]


def test_min_correlation_masks_weak_pixels_in_every_product(run, tmp_path, capsys):
    import sunpy.map

    _, out, argv = run
    full = xr.open_zarr(out / "timelag_maps.zarr").compute().sel(pair="94-171")
    peak = full["max_correlation"].values
    threshold = float(np.median(peak))  # masks about half of the pixels
    weak = peak < threshold
    assert weak.any() and (~weak).any()
    masked_out = tmp_path / "masked"
    rerun = [*argv[:-1], str(masked_out), "--min-correlation", str(threshold)]
    assert main(rerun) == 0
    masked = xr.open_zarr(masked_out / "timelag_maps.zarr").compute().sel(pair="94-171")
    assert np.isnan(masked["timelag"].values[weak]).all()
    np.testing.assert_array_equal(masked["timelag"].values[~weak], full["timelag"].values[~weak])
    np.testing.assert_array_equal(masked["max_correlation"].values, peak)
    lag_file = sunpy.map.Map(masked_out / "fits" / "timelag_94_171.fits")
    np.testing.assert_array_equal(np.isnan(lag_file.data), weak)
    capsys.readouterr()
    assert main([*rerun[:-1], "1.5", "--overwrite"]) == 2
    assert "--min-correlation" in capsys.readouterr().err
