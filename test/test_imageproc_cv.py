"""OpenCV-backed image helpers of the online pipeline (fhgs_ros.online.imageproc)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fhgs_ros.online.imageproc import (InputError, decode_color, decode_compressed, encode_compressed, resize_depth,
                                       resize_rgb)


def test_resize_depth_is_centre_aligned_nearest_for_every_dtype():
    """Downscale by 3 picks the centre pixel of each 3x3 block; int64 labels and float depths alike."""
    a = np.arange(12 * 9).reshape(9, 12)
    for dt in (np.float32, np.uint16, np.int64):
        out = resize_depth(a.astype(dt), 4, 3)
        assert out.dtype == dt and out.shape == (3, 4)
        assert np.array_equal(out, a[1::3, 1::3].astype(dt))
    up = resize_depth(np.array([[1.0, 2.0]], np.float32), 4, 2)   # upscale: each value repeated
    assert np.array_equal(up, np.array([[1, 1, 2, 2], [1, 1, 2, 2]], np.float32))


def test_resize_rgb_area_average_when_shrinking():
    """2x2 blocks of distinct colours shrink to their means (antialiased, no aliasing)."""
    img = np.zeros((4, 4, 3), np.uint8)
    img[0::2, 0::2] = 200
    img[1::2, 1::2] = 100
    out = resize_rgb(img, 2, 2)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert np.all(np.abs(out.astype(int) - 75) <= 1)
    assert resize_rgb(img, 4, 4) is img
    assert resize_rgb(img, 8, 6).shape == (6, 8, 3)


def test_colour_conversions_and_decoding():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert np.array_equal(decode_color("bgr8", 5, 7, 21, bgr.tobytes()), rgb)
    bgra = np.concatenate([bgr, np.full((5, 7, 1), 9, np.uint8)], 2)
    assert np.array_equal(decode_color("bgra8", 5, 7, 28, bgra.tobytes()), rgb)
    mono16 = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000)
    out = decode_color("mono16", 5, 7, 14, mono16.tobytes())
    assert np.array_equal(out[:, :, 1], (mono16 >> 8).astype(np.uint8)) and np.array_equal(out[:, :, 0], out[:, :, 2])
    # png round trip (lossless), 16-bit grey png mapped >> 8, grey png to three equal channels
    assert np.array_equal(decode_compressed("png", encode_compressed(rgb, "png")), rgb)
    ok, png16 = cv2.imencode(".png", mono16)
    assert ok and np.array_equal(decode_compressed("png", png16.tobytes())[:, :, 2], (mono16 >> 8).astype(np.uint8))
    ok, grey = cv2.imencode(".png", rgb[:, :, 0])
    assert np.array_equal(decode_compressed("png", grey.tobytes()), np.repeat(rgb[:, :, :1], 3, 2))
    for bad in (b"GIF89a" + bytes(20), encode_compressed(rgb, "jpeg")[:40]):
        with pytest.raises(InputError):
            decode_compressed("jpeg", bad)
