"""Image blobs: every codec is lossless, self-describing, and old (version-1) blobs stay readable."""

from __future__ import annotations

import struct

import blosc2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aqqua_geo.store import codec

shapes = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.integers(1, 20), st.integers(1, 20), st.sampled_from([1, 3, 4])),
)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, shapes), st.sampled_from(sorted(codec.CODECS)))
def test_every_codec_round_trips(image, name):
    blob = codec.encode(image, name)
    out = codec.decode(blob)
    assert out.dtype == np.uint8 and out.shape == image.shape and out.flags.writeable
    np.testing.assert_array_equal(out, image)
    assert codec.blob_size(blob) == len(blob)
    assert codec.blob_size(blob[:16]) == len(blob)  # the header alone tells a reader when it has all segments


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 30), st.integers(1, 30))))
def test_version1_blobs_still_decode(image):
    """Stores written before the v2 header: 10-byte header + a blosc2 chunk (LZ4HC or ZSTD)."""
    for c in (blosc2.Codec.LZ4HC, blosc2.Codec.ZSTD):
        body = blosc2.compress2(np.ascontiguousarray(image), typesize=1, codec=c, clevel=5,
                                filters=[blosc2.Filter.NOFILTER], filters_meta=[0])
        blob = struct.pack("<2sBBHHH", b"AQ", 1, 2, *image.shape, 0) + body
        np.testing.assert_array_equal(codec.decode(blob), image)
        assert codec.blob_size(blob[:48]) == len(blob)


def test_up_predictor_wraps_mod_256():
    image = np.array([[0, 255], [255, 0], [1, 254]], np.uint8)  # differences cross 0 and 255
    np.testing.assert_array_equal(codec.decode(codec.encode(image, "zstd")), image)


def test_default_codec_is_smaller_than_lz4hc_on_a_real_vignette():
    from aqqua_geo import data
    from aqqua_geo.ingest.common import decode_image

    path = sorted(data.path("uvp6_vignettes").rglob("*.png"))[0]
    image = decode_image(path.read_bytes(), str(path))
    assert len(codec.encode(image, codec.DEFAULT_CODEC)) < len(codec.encode(image, "lz4hc"))


def test_damaged_blobs_raise_value_error():
    image = np.arange(600, dtype=np.uint8).reshape(20, 30)
    blob = codec.encode(image, "zstd")
    with pytest.raises(ValueError, match="not an aqqua image blob"):
        codec.decode(b"XX" + blob[2:])
    with pytest.raises(ValueError, match="not an aqqua image blob"):
        codec.decode(blob[:2] + bytes([9]) + blob[3:])  # a future version
    with pytest.raises(ValueError, match="truncated"):
        codec.decode(blob[:-3])
    with pytest.raises(ValueError, match="unknown container"):
        codec.decode(blob[:10] + bytes([7]) + blob[11:])
    with pytest.raises(ValueError, match="unknown predictor"):
        codec.decode(blob[:11] + bytes([7]) + blob[12:])
    wrong_shape = bytearray(blob)
    struct.pack_into("<H", wrong_shape, 4, 21)  # header says 21 rows, payload holds 20
    with pytest.raises(ValueError, match="header says shape"):
        codec.decode(bytes(wrong_shape))
    corrupt = bytearray(blob)
    corrupt[16:24] = bytes(8)  # the zstd frame's magic and header
    with pytest.raises(ValueError, match="payload"):
        codec.decode(bytes(corrupt))


def test_unknown_codec_and_bad_images_are_refused():
    with pytest.raises(ValueError, match="unknown codec"):
        codec.encode(np.zeros((2, 2), np.uint8), "png")
    with pytest.raises(TypeError):
        codec.encode(np.zeros((2, 2), np.uint16))
    with pytest.raises(ValueError, match="empty"):
        codec.encode(np.zeros((0, 3), np.uint8))


def test_manifest_description_names_library_and_predictor():
    assert codec.codec_info("zstd")["library"] == "zstandard" and codec.codec_info("zstd")["predictor"] == "up"
    assert codec.codec_info("lz4hc")["library"] == "blosc2"
    with pytest.raises(KeyError):
        codec.codec_info("nope")
