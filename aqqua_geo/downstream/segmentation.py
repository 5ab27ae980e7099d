"""IFCB blob segmentation as WHOI's ifcb-features v4 (and ifcb-analysis) describe it.

IFCB ROIs are bright-field images of cells that are often nearly transparent: a grey threshold
finds their dark organelles or rims, not the cell. WHOI segments them on *edges* instead, in
these steps (``ifcb-features`` v4, the Python port of ``ifcb-analysis``' ``blob`` extraction),
reimplemented here from that description with phasepack, SciPy and scikit-image:

1. **Phase congruency** of the ROI (Kovesi's ``phasecong3``, :mod:`phasepack`): ``M + m``, the
   sum of the maximum and minimum moments of phase congruency (edges and corners), with
   4 scales, 6 orientations, minimum wavelength 2, scale factor 2.5, σ_onf 0.55, noise
   k = 2, cut-off 0.3, gain 5 and the median noise estimate.
2. In a stitched V1 ROI, the gap between the two pieces (grown by one pixel) has no edges.
3. **Hysteresis** of the edge map: pixels above 0.3, grown 8-connectedly through pixels
   above 0.09.
4. Edge pixels on the image border are dropped unless the next pixel inwards is an edge too.
5. **Closing** with a radius-2 diamond (the image padded first, so that border blobs keep
   their shape), then 3 iterations of **thinning** (MATLAB ``bwmorph(·, 'thin', 3)``,
   :func:`skimage.morphology.thin`).
6. **Dark threshold**: two-means clustering of the grey levels (in [0, 1], started at 0 and 1);
   pixels darker than 0.75 × the darkest pixel of the bright (background) cluster are object.
7. Edges ∪ dark pixels, **holes filled**.
8. One **erosion** with a radius-1 diamond (kept only if a blob survives it), then blobs of
   fewer than 41 pixels (8-connected) are removed.

Features are measured on the largest blob (:func:`aqqua_geo.downstream.traits.measure`), as in
ifcb-features; the other blobs are what WHOI's ``numBlobs``/``summed*`` features sum over.

On the bundled bin ``IFCB5_2012_028_081515`` this reproduces WHOI's golden v4 blob masks pixel
for pixel in 4 of 5 ROIs and to 3 pixels of 1049 in the stitched one
(``tests/downstream/test_segmentation.py``, ``benchmarks/traits_vs_ifcb.py``).
"""

from __future__ import annotations

import warnings

import numpy as np

#: phase-congruency parameters of ifcb-features v4 (phasepack.phasecong keyword names)
PHASECONG_PARAMS: dict[str, float] = {"nscale": 4, "norient": 6, "minWaveLength": 2, "mult": 2.5,
                                      "sigmaOnf": 0.55, "k": 2.0, "cutOff": 0.3, "g": 5, "noiseMethod": -1}
EDGE_HIGH, EDGE_LOW = 0.3, 0.09  # hysteresis thresholds on M + m (dimensionless, 0..2)
DARK_ADJUSTMENT = 0.75  # object = darker than this × the darkest background-cluster grey level
MIN_BLOB_PX = 41  # smallest blob kept (ifcb-features: bwareaopen(·, 41))
THIN_ITERATIONS = 3

_EIGHT = np.ones((3, 3), bool)


def _diamond(radius: int) -> np.ndarray:
    from skimage.morphology import diamond

    return diamond(radius).astype(bool)


def phase_congruency_edges(grey: np.ndarray) -> np.ndarray:
    """``M + m`` (max + min moment of phase congruency) of a grey image, float64, same shape."""
    with warnings.catch_warnings():
        # phasepack warns at import when the optional pyfftw is missing; numpy's FFT is enough here
        warnings.simplefilter("ignore", UserWarning)
        from phasepack import phasecong

    big_m, small_m, *_ = phasecong(np.asarray(grey, dtype=np.float64), **PHASECONG_PARAMS)
    return np.asarray(big_m + small_m, dtype=np.float64)


def hysteresis_8(values: np.ndarray, high: float, low: float) -> np.ndarray:
    """Pixels above *low* that are 8-connected (through such pixels) to a pixel above *high*.

    (:func:`skimage.filters.apply_hysteresis_threshold` connects 4-wise; Kovesi's and WHOI's
    hysteresis connect 8-wise.)
    """
    from scipy import ndimage as ndi

    labels, n = ndi.label(values > low, structure=_EIGHT)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[values > high])] = True
    keep[0] = False
    return keep[labels]


def dark_pixels(grey: np.ndarray, adjustment: float = DARK_ADJUSTMENT) -> np.ndarray:
    """Pixels darker than *adjustment* × the darkest pixel of the bright cluster of a 2-means split."""
    from sklearn.cluster import KMeans

    r = np.asarray(grey, dtype=np.float64) / 255.0
    if float(r.max() - r.min()) == 0.0:
        return np.zeros(r.shape, bool)
    # 1-D two-means started at black and white, run to convergence (tol=0), as MATLAB kmeans
    km = KMeans(2, init=np.array([[0.0], [1.0]]), n_init=1, tol=0.0, max_iter=100).fit(r.reshape(-1, 1))
    bright = int(np.argmax(km.cluster_centers_[:, 0]))
    darkest_background = float(r.reshape(-1)[km.labels_ == bright].min())
    return r <= darkest_background * adjustment


def remove_small_blobs(mask: np.ndarray, min_px: int = MIN_BLOB_PX) -> np.ndarray:
    """*mask* without its 8-connected blobs of fewer than *min_px* pixels."""
    from scipy import ndimage as ndi

    labels, _ = ndi.label(mask, structure=_EIGHT)
    keep = np.bincount(labels.ravel()) >= min_px
    keep[0] = False
    return keep[labels]


def ifcb_blobs(roi: np.ndarray, gap_mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of every blob of an IFCB ROI (steps 1–8 of the module docstring).

    *roi* is the raw 8-bit ROI (H×W); *gap_mask* (H×W, True = not imaged) marks the gap of a
    stitched V1 ROI. The result may be all False (nothing passes, or all blobs are small).
    """
    from scipy import ndimage as ndi
    from skimage.morphology import thin

    grey = np.asarray(roi)
    if grey.ndim != 2:
        raise ValueError(f"ifcb_blobs: a 2-D grey ROI is needed, got shape {grey.shape}")
    if min(grey.shape) < 3:
        return np.zeros(grey.shape, bool)
    edges_mm = phase_congruency_edges(grey)
    if gap_mask is not None:
        gap_mask = np.asarray(gap_mask, bool)
        if gap_mask.shape != grey.shape:
            raise ValueError(f"ifcb_blobs: gap mask shape {gap_mask.shape} differs from ROI shape {grey.shape}")
        edges_mm[ndi.binary_dilation(gap_mask)] = 0.0
    b = hysteresis_8(edges_mm, EDGE_HIGH, EDGE_LOW)
    # border edges count only where the edge continues inwards
    b[b[:, 1] == 0, 0] = False
    b[b[:, -2] == 0, -1] = False
    b[0, b[1, :] == 0] = False
    b[-1, b[-2, :] == 0] = False
    r = 2
    b = ndi.binary_closing(np.pad(b, r), structure=_diamond(r))[r:-r, r:-r]
    b = thin(b, max_num_iter=THIN_ITERATIONS)
    b = ndi.binary_fill_holes(b | dark_pixels(grey))
    # the image edge does not erode (outside counts as object, as a reflected border)
    eroded = ndi.binary_erosion(b, structure=_diamond(1), border_value=1)
    if remove_small_blobs(eroded).any():
        b = eroded
    return remove_small_blobs(b)
