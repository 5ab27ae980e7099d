"""Morphometric traits of plankton vignettes, as EcoTaxa/ZooProcess users know them.

One image holds one organism (a vignette or an IFCB ROI). :func:`segment` finds it, :func:`measure`
describes it in physical units, :func:`measure_many` does that for a whole store chunk, and
:class:`TraitRegressor` learns traits from embeddings where metadata provide them.

Segmentation
    Instruments differ in illumination: the UVP images bright objects on a black background
    (dark field); ZooScan, IFCB and FlowCam image dark (or mixed dark/bright, phase-contrast-like)
    objects on a light background (bright field). The background grey level is the median of the
    one-pixel image border, and the image is dark-field when that level is closer to the darkest
    than to the brightest pixel. The object is what departs from the background by more than a
    threshold on ``|grey - background|`` (this covers both polarities and IFCB's bright halos):
    hysteresis between Otsu's (or the triangle) threshold of that contrast and half of it, never
    below a noise floor estimated from the border, so that the faint body of a cell whose rim passes
    the threshold is kept. A 2-pixel closing joins fragments and holes are filled.

    The main 8-connected object is kept (:func:`main_object`): the largest solid one, or a
    central one of comparable size. ZooProcess and WHOI's ifcb-features also describe the largest
    blob; the solidity and centre rules ignore the corner marks, legend and scale bar printed in
    the margins of ZooProcess vignettes. When only margin objects pass the threshold of a
    bright-field image (a black legend sets Otsu's threshold above a faint organism), they are
    masked out and the image is thresholded again. Corner marks touching the organism stay in its
    mask (a few % of its area). Given masks are measured on their largest blob, as WHOI does.

    The background is read on the border, so a vignette cropped inside the organism (no
    background margin) is not segmented correctly; instrument vignettes keep a margin.

    IFCB ROIs are segmented as WHOI's ifcb-features v4 does (``method="ifcb"``,
    :mod:`aqqua_geo.downstream.segmentation`: phase-congruency edges, hysteresis, closing,
    thinning, a dark threshold, hole filling, erosion, small blobs removed) and measured on their
    largest blob. :func:`segmentation_method` picks it for instrument ``"IFCB"``;
    :func:`measure_many` does so per image when given the instruments. A grey threshold finds
    only the dark organelles of transparent cells: on the bundled reference bin it was a median
    37 % off WHOI's area, the edge segmentation is 0 % off (``benchmarks/traits_vs_ifcb.py``).

Units (in the key names): ``_um`` µm, ``_um2`` µm², ``_um3`` µm³, ``_px`` pixels, ``_deg`` degrees;
grey statistics are raw 8-bit grey levels of the image as stored (0 = black); ratios are unitless.

Correspondence with ZooProcess/EcoTaxa ``object_*`` columns: area→``area_um2`` (ZooProcess area is in
px; × pixel²), esd, major, minor, perim.→``perimeter_um``, feret→``feret_um``, circ.→``circularity``,
elongation, mean/stddev/min/max/median/skew/kurt/range/cv→``*_grey``, intden→``intden_grey``,
convarea→``convex_area_um2``, area_exc→``area_exc_um2``. Major/minor axes are those of the ellipse
with the same second moments (``skimage.measure.regionprops``; see the IFCB notes below);
ImageJ/ZooProcess rescale that ellipse to the object area, which differs by a few percent for
irregular shapes.

Correspondence with IFCB features (ifcb-analysis v2 / WHOI ``ifcb-features``, same blob): ``Area`` →
``area_px`` (pixel count), ``EquivDiameter`` → ``esd_um``, ``MajorAxisLength``/``MinorAxisLength`` →
``major_um``/``minor_um`` (second-moment ellipse), ``Perimeter`` → ``perimeter_um`` (both
``regionprops`` perimeter: 4-connected boundary pixels, straight steps 1 and diagonal steps √2, as
MATLAB's ``regionprops``), ``Biovolume`` → ``biovolume_ms_um3`` and ``RepresentativeWidth`` →
``representative_width_um`` (:func:`ifcb_biovolume`, Moberg & Sosik 2012, Limnol. Oceanogr. Methods
10:278: a solid of revolution about the major axis for compact shapes, the distance-map volume
otherwise). ``biovolume_um3`` stays the prolate spheroid of the ellipse axes, as EcoTaxa computes
it for UVP/ZooScan. With WHOI's blob masks these match the golden table to 1e-6 (area, ESD,
perimeter), 0.5 % (axes) and 1 % (biovolume), and our ``"ifcb"`` segmentation reproduces WHOI's
masks (``benchmarks/traits_vs_ifcb.py`` prints the deviations per feature, median and 90th
percentile).

Definitions against ifcb-analysis (MATLAB, Sosik & Olson 2007; Moberg & Sosik 2012):

- ``Perimeter``: MATLAB ``regionprops`` perimeter, the length of the chain of 4-connected
  boundary pixels with straight steps 1 and diagonal steps √2 (``skimage`` ``perimeter`` with
  neighbourhood 4, the same definition), not the length of a smoothed outline.
- ``Biovolume``: Moberg & Sosik (2012) — a solid of revolution about the major axis when the blob
  is compact (convex area / area < 1.2, or eccentricity < 0.8 and ESD / major axis > 0.8), else
  the distance-map volume: Euclidean distance to the perimeter + 1, summed over the blob, × π and
  a diamond-to-circle correction of the representative transect (:func:`distance_map_volume`).
  It is not the prolate spheroid of ``biovolume_um3`` (EcoTaxa's), which overestimates
  concave and thin cells.
- ``MajorAxisLength``/``MinorAxisLength``: 4·√(eigenvalue) of the covariance of the blob's pixel
  coordinates. scikit-image (here) divides by N; ifcb-features v4 by N − 1 (``numpy.cov``), which
  makes its axes longer by √(N/(N−1)): 0.37 % for a 135-pixel blob, < 0.01 % above 5 000 pixels;
  MATLAB ``regionprops`` (ifcb-analysis v2) adds the 1/12 px² variance of a unit-square pixel
  instead. ``EquivDiameter`` √(4·Area/π); ``Area`` the pixel count of the largest blob (holes
  filled by the segmentation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from aqqua_geo.imaging import background_stats, to_grey

#: Every key returned by :func:`measure`, with its unit ("1" = unitless, "grey" = 8-bit level).
TRAIT_UNITS: dict[str, str] = {
    "area_px": "px",
    "area_um2": "um2",
    "area_exc_um2": "um2",
    "esd_um": "um",
    "major_um": "um",
    "minor_um": "um",
    "perimeter_um": "um",
    "feret_um": "um",
    "convex_area_um2": "um2",
    "width_um": "um",
    "height_um": "um",
    "biovolume_um3": "um3",
    "biovolume_sph_um3": "um3",
    "biovolume_ms_um3": "um3",
    "representative_width_um": "um",
    "circularity": "1",
    "elongation": "1",
    "eccentricity": "1",
    "solidity": "1",
    "extent": "1",
    "orientation_deg": "deg",
    "mean_grey": "grey",
    "std_grey": "grey",
    "min_grey": "grey",
    "max_grey": "grey",
    "median_grey": "grey",
    "range_grey": "grey",
    "cv_grey": "1",
    "skew_grey": "1",
    "kurt_grey": "1",
    "intden_grey": "grey",
    "background_grey": "grey",
    "contrast_grey": "grey",
    "dark_field": "1",
    "n_objects": "1",
}

TRAIT_KEYS: tuple[str, ...] = tuple(TRAIT_UNITS)

_NOISE_SIGMAS = 4.0  # threshold floor, in robust standard deviations of the border noise
_MIN_CONTRAST = 3.0  # grey levels: an image flatter than this holds no object
_HYSTERESIS_LOW = 0.5  # low/high ratio of the hysteresis threshold
_CENTRAL_MIN_RATIO = 0.25  # a central object this solid (vs the largest) is preferred to it


SEGMENTATION_METHODS = ("otsu", "triangle", "ifcb")
#: instruments whose images are segmented with the IFCB edge method rather than a grey threshold
EDGE_SEGMENTED_INSTRUMENTS = frozenset({"IFCB"})


def segmentation_method(instrument: str | None, default: str | float = "otsu") -> str | float:
    """Segmentation method for images of *instrument*: ``"ifcb"`` for IFCB, else *default*."""
    return "ifcb" if instrument in EDGE_SEGMENTED_INSTRUMENTS else default


def segment(image: np.ndarray, method: str | float = "otsu", closing_radius: int = 2) -> np.ndarray:
    """Boolean mask of the organism in *image* (main object, holes filled; may be all False).

    ``method``: ``"otsu"`` or ``"triangle"``: hysteresis thresholding of the contrast to the
    background, high = Otsu's (or the triangle) threshold, low = half of it, both at least 4 σ of
    the border noise; a number = one fixed contrast threshold in grey levels; ``"ifcb"``: WHOI's
    ifcb-features edge segmentation (:func:`aqqua_geo.downstream.segmentation.ifcb_blobs`), largest
    blob (*closing_radius* does not apply).
    """
    return _segment(to_grey(image), method, closing_radius)[1]


def _segment(grey: np.ndarray, method: str | float, closing_radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(pixels above the threshold, filled main object) of a grey image."""
    empty = np.zeros(grey.shape, bool)
    if min(grey.shape) < 2:
        return empty, empty
    if method == "ifcb":
        from aqqua_geo.downstream.segmentation import ifcb_blobs

        blobs = ifcb_blobs(grey)
        return blobs, largest_object(blobs)
    bg, dark_field, noise = background_stats(grey)
    contrast = np.abs(grey - bg)
    if float(contrast.max()) < _MIN_CONTRAST:
        return empty, empty
    above = _threshold(contrast, method, noise)
    closed = _close_and_fill(above, closing_radius)
    obj = main_object(closed)
    if isinstance(method, str) and not dark_field and obj.any() and not _reaches_centre(obj):
        # Only margin objects (a black legend printed on a bright-field ZooProcess vignette)
        # passed a threshold that they set themselves: threshold again without them, for a
        # fainter organism in the centre.
        rest = np.where(closed, 0.0, contrast)
        if float(rest.max()) >= _MIN_CONTRAST:
            above2 = _threshold(rest, method, noise)
            obj2 = main_object(_close_and_fill(above2, closing_radius))
            if _reaches_centre(obj2) and obj2.sum() >= _CENTRAL_MIN_RATIO * obj.sum():
                return above2, obj2
    return above, obj


def _threshold(contrast: np.ndarray, method: str | float, noise: float) -> np.ndarray:
    from skimage.filters import apply_hysteresis_threshold, threshold_otsu, threshold_triangle

    if not isinstance(method, str):
        return contrast > float(method)
    if method == "otsu":
        high = float(threshold_otsu(contrast))
    elif method == "triangle":
        high = float(threshold_triangle(contrast))
    else:
        raise ValueError(f"segment: unknown method {method!r} (expected one of {SEGMENTATION_METHODS} or a number)")
    floor = max(_NOISE_SIGMAS * noise, 1.0)
    low = max(_HYSTERESIS_LOW * high, floor)
    # hysteresis keeps the faint body of cells whose rim or organelles pass the threshold
    return apply_hysteresis_threshold(contrast, low, max(high, low))


def _close_and_fill(above: np.ndarray, closing_radius: int) -> np.ndarray:
    from scipy import ndimage as ndi

    closed = above
    if closing_radius > 0:
        # pad so that objects touching the border are not eroded by the closing
        r = closing_radius
        structure = np.ones((2 * r + 1, 2 * r + 1), bool)
        closed = ndi.binary_closing(np.pad(above, r), structure=structure)[r:-r, r:-r]
    return ndi.binary_fill_holes(closed)


def _centre_box(shape: tuple[int, ...]) -> tuple[slice, slice]:
    h, w = shape[:2]
    return slice(h // 4, h - h // 4), slice(w // 4, w - w // 4)


def _reaches_centre(mask: np.ndarray) -> bool:
    return bool(mask[_centre_box(mask.shape)].any())


def main_object(mask: np.ndarray) -> np.ndarray:
    """The vignette's subject among the 8-connected components of *mask*.

    Components are ranked by solid area (pixels that survive a 3×3 opening: thin lines such as the
    corner marks, legend and scale bar of ZooProcess vignettes have none). The largest solid
    component wins, unless another one reaching the central half of the image is at least
    :data:`_CENTRAL_MIN_RATIO` as solid (the subject is near the centre, legends are in the
    margins; UVP6 vignettes are left-aligned, so the centre cannot be required).
    """
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    solid = np.bincount(labels[ndi.binary_opening(mask, structure=np.ones((3, 3), bool))], minlength=n + 1)
    solid[0] = 0
    if solid.max() == 0:
        return labels == int(np.argmax(sizes))
    best = int(np.argmax(solid))
    centre = labels[_centre_box(mask.shape)]
    candidates = np.unique(centre[centre > 0])
    candidates = candidates[solid[candidates] >= _CENTRAL_MIN_RATIO * solid[best]]
    if candidates.size and best not in candidates:
        best = int(candidates[np.argmax(solid[candidates])])
    return labels == best


def largest_object(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected component of *mask*."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _count_objects(mask: np.ndarray, min_px: int = 5) -> int:
    """Number of 8-connected objects of at least *min_px* pixels (smaller ones are noise)."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:] >= min_px)) if n else 0


def _perimeter_pixels(mask: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour outside the object (MATLAB ``bwperim``, 4-connectivity)."""
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(2, 1), border_value=0)


def distance_map_volume(mask: np.ndarray) -> tuple[float, float]:
    """Moberg & Sosik (2012) distance-map volume (px³) and representative width (px) of a blob.

    ``D`` = Euclidean distance to the nearest perimeter pixel + 1 over the filled blob; the
    cross-section along each distance ridge is a diamond of half-width ``D``, turned into a
    circle: ``V = c·π·ΣD`` with the correction ``c = x²/(x² + 2x + 0.5)`` for the representative
    transect ``x = 4·mean(D) − 2`` (the representative width).
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    if not mask.any():
        return math.nan, math.nan
    perim = _perimeter_pixels(mask)
    d = ndi.distance_transform_edt(~perim) + 1.0
    inside = ndi.binary_fill_holes(perim)
    dv = d[inside]
    x = 4.0 * float(dv.mean()) - 2.0
    c = x * x / (x * x + 2.0 * x + 0.5)
    return c * math.pi * float(dv.sum()), x


def solid_of_revolution_volume(mask: np.ndarray, orientation_rad: float) -> tuple[float, float]:
    """Volume (px³) and mean width (px) of a blob turned about its major axis (Moberg & Sosik 2012).

    The blob is rotated (nearest neighbour) so that its major axis is horizontal; every column is
    a disc of diameter equal to the column's height, consecutive discs are joined as conical
    frusta, and the end slices are extended by half a pixel.
    """
    from skimage.transform import rotate

    mask = np.asarray(mask, bool)
    if not mask.any():
        return math.nan, math.nan
    rot = rotate(mask.astype(np.float64), 90.0 - math.degrees(orientation_rad), resize=True, order=0) > 0.5
    cols = rot.sum(axis=0)
    r = cols[cols > 0].astype(np.float64) / 2.0
    if r.size == 1:
        return math.pi * r[0] ** 2, 2.0 * r[0]
    x = np.arange(1, r.size + 1, dtype=np.float64)
    x[0] -= 0.5
    x[-1] += 0.5
    b = math.pi * r**2
    volume = float(np.sum(np.diff(x) / 3.0 * (b[1:] + b[:-1] + np.sqrt(b[1:] * b[:-1]))))
    return volume, float(np.mean(2.0 * r))


def ifcb_biovolume(mask: np.ndarray) -> tuple[float, float, str]:
    """IFCB biovolume (px³), representative width (px) and method, as ifcb-analysis chooses it.

    Solid of revolution when the blob is compact (convex area / area < 1.2, or eccentricity < 0.8
    with ESD / major axis > 0.8), distance-map volume otherwise (Moberg & Sosik 2012).
    """
    from skimage.measure import regionprops

    mask = np.asarray(mask, bool)
    if not mask.any():
        return math.nan, math.nan, "none"
    rp = regionprops(mask.astype(np.uint8))[0]
    ratio = float(rp.area_convex) / float(rp.area)
    p = float(rp.equivalent_diameter_area) / float(rp.axis_major_length) if rp.axis_major_length > 0 else 1.0
    if ratio < 1.2 or (rp.eccentricity < 0.8 and p > 0.8):
        v, w = solid_of_revolution_volume(mask, float(rp.orientation))
        return v, w, "sor"
    v, w = distance_map_volume(mask)
    return v, w, "distmap"


def _nan_traits() -> dict[str, float]:
    return {k: math.nan for k in TRAIT_KEYS}


def measure(
    image: np.ndarray,
    pixel_size_um: float,
    mask: np.ndarray | None = None,
    method: str | float = "otsu",
) -> dict[str, float]:
    """Morphometric traits of the organism in *image* (keys and units: :data:`TRAIT_UNITS`).

    *mask* (H×W, non-zero = object) replaces the automatic segmentation, e.g. to measure WHOI's
    blob masks; only its largest object is measured. With no object every trait is NaN except
    ``n_objects`` (0) and the background statistics. A NaN or missing pixel size leaves pixel-based
    traits (``area_px``, grey levels, ratios) valid and makes physical sizes NaN.
    """
    return segment_and_measure(image, pixel_size_um, mask=mask, method=method)[0]


def segment_and_measure(
    image: np.ndarray,
    pixel_size_um: float,
    mask: np.ndarray | None = None,
    method: str | float = "otsu",
) -> tuple[dict[str, float], np.ndarray]:
    """:func:`measure` that also returns the measured object's boolean mask (for more features)."""
    from skimage.measure import regionprops

    grey = to_grey(image)
    bg, dark_field, _ = background_stats(grey) if min(grey.shape) >= 2 else (float(grey.mean()), False, 0.0)
    if mask is None:
        raw, obj = _segment(grey, method)
    else:
        mask = np.asarray(mask)
        if mask.shape != grey.shape:
            raise ValueError(f"measure: mask shape {mask.shape} differs from image shape {grey.shape}")
        raw = mask != 0
        obj = largest_object(raw)
    out = _nan_traits()
    out.update(background_grey=bg, dark_field=float(dark_field))
    out["n_objects"] = float(_count_objects(raw))
    if not obj.any():
        return out, obj

    px = float(pixel_size_um) if pixel_size_um is not None else math.nan
    if not px > 0:  # also catches NaN
        px = math.nan
    rp = regionprops(obj.astype(np.uint8))[0]
    area = float(rp.area)
    major = float(rp.axis_major_length)
    minor = float(rp.axis_minor_length)
    perim = float(rp.perimeter)
    esd_px = 2.0 * math.sqrt(area / math.pi)
    r0, c0, r1, c1 = rp.bbox
    # area excluding holes: object pixels that passed the threshold before hole filling
    area_exc = float(np.count_nonzero(obj & raw))

    r0c, c0c, r1c, c1c = rp.bbox
    ms_volume, ms_width, _ = ifcb_biovolume(obj[r0c:r1c, c0c:c1c])
    vals = grey[obj]
    mean = float(vals.mean())
    std = float(vals.std())
    if std > 0:
        z = (vals - mean) / std
        skew = float(np.mean(z**3))
        kurt = float(np.mean(z**4) - 3.0)
    else:
        skew = kurt = 0.0
    vmin, vmax = float(vals.min()), float(vals.max())
    out.update(
        area_px=area,
        area_um2=area * px**2,
        area_exc_um2=area_exc * px**2,
        esd_um=esd_px * px,
        major_um=major * px,
        minor_um=minor * px,
        perimeter_um=perim * px,
        feret_um=float(rp.feret_diameter_max) * px,
        convex_area_um2=float(rp.area_convex) * px**2,
        width_um=float(c1 - c0) * px,
        height_um=float(r1 - r0) * px,
        # prolate spheroid around the major axis: 4/3·π·(a/2)·(b/2)²
        biovolume_um3=4.0 / 3.0 * math.pi * (major / 2.0) * (minor / 2.0) ** 2 * px**3,
        biovolume_sph_um3=math.pi / 6.0 * esd_px**3 * px**3,
        biovolume_ms_um3=ms_volume * px**3,
        representative_width_um=ms_width * px,
        circularity=4.0 * math.pi * area / perim**2 if perim > 0 else math.nan,
        elongation=major / minor if minor > 0 else math.nan,
        eccentricity=float(rp.eccentricity),
        solidity=float(rp.solidity),
        extent=float(rp.extent),
        orientation_deg=math.degrees(float(rp.orientation)),
        mean_grey=mean,
        std_grey=std,
        min_grey=vmin,
        max_grey=vmax,
        median_grey=float(np.median(vals)),
        range_grey=vmax - vmin,
        cv_grey=std / mean if mean > 0 else math.nan,
        skew_grey=skew,
        kurt_grey=kurt,
        intden_grey=float(vals.sum()),
        contrast_grey=abs(mean - bg),
    )
    return out, obj


def measure_many(
    images: Sequence[np.ndarray],
    pixel_sizes_um: Sequence[float] | float,
    masks: Sequence[np.ndarray | None] | None = None,
    method: str | float = "otsu",
    progress: bool = False,
    instruments: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """:func:`measure` every image; one row per image, columns :data:`TRAIT_KEYS` (float64).

    ``pixel_sizes_um`` is one value per image or a single value for all. With *instruments* (one
    per image) each image is segmented by :func:`segmentation_method` of its instrument (IFCB:
    edge segmentation), *method* for the others.
    """
    n = len(images)
    if instruments is not None and len(instruments) != n:
        raise ValueError(f"measure_many: {n} images but {len(instruments)} instruments")
    methods = [method] * n if instruments is None else [segmentation_method(i, method) for i in instruments]
    if np.isscalar(pixel_sizes_um):
        sizes = [float(pixel_sizes_um)] * n
    else:
        sizes = [float(p) for p in pixel_sizes_um]
        if len(sizes) != n:
            raise ValueError(f"measure_many: {n} images but {len(sizes)} pixel sizes")
    if masks is not None and len(masks) != n:
        raise ValueError(f"measure_many: {n} images but {len(masks)} masks")
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="traits", unit="img")
    rows = [measure(images[i], sizes[i], None if masks is None else masks[i], methods[i]) for i in it]
    return pd.DataFrame.from_records(rows, columns=list(TRAIT_KEYS)).astype("float64")


def plot_segmentations(
    images: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str] | None = None,
    method: str | float = "otsu",
    ncols: int = 6,
) -> Path:
    """Save a PNG grid of images with the outline of the measured object (segmentation QC)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    if not len(images):
        raise ValueError("plot_segmentations: no images")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.2 * ncols, 2.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, image in enumerate(images):
        ax = axes.ravel()[i]
        grey = to_grey(image)
        mask = segment(grey, method=method)
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="tab:red", linewidths=0.8)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
