"""Decoding by content and the centre-square resize, against numpy/PIL references."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from alexnet_pipe.ingest import images


def smooth(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def jpeg(rgb, **kw):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def test_16bit_png_rgba_and_gray_become_rgb8():
    rgb = smooth(20, 30)
    wide = rgb.astype(np.uint16) * 257 + np.uint16(100)
    ok, png16 = cv2.imencode(".png", wide[..., ::-1])
    ref = ((wide.astype(np.uint32) + 128) // 257).astype(np.uint8)
    assert (images.decode_rgb(png16.tobytes()) == ref).all()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    ok, png4 = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert (images.decode_rgb(png4.tobytes()) == rgb).all()
    ok, gray = cv2.imencode(".png", rgb[..., 0])
    assert (images.decode_rgb(gray.tobytes()) == np.repeat(rgb[..., :1], 3, 2)).all()


def test_cmyk_jpeg_matches_pil():
    rgb = smooth(40, 50)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(int)
    assert np.abs(images.decode_rgb(buf.getvalue()).astype(int) - ref).max() <= 1


@pytest.mark.parametrize("progressive", [False, True])
def test_truncation_is_caught_before_libjpeg_fills_grey(progressive):
    data = jpeg(smooth(64, 80), progressive=progressive)
    assert images.jpeg_info(data) == (64, 80, 3, True)
    for cut in (0.3, 0.6, 0.95):
        with pytest.raises(images.Reject, match="truncated"):
            images.decode_rgb(data[:int(len(data) * cut)])
    trailing = data + b"\x00" * 10  # bytes after EOI are harmless
    assert images.decode_rgb(trailing).shape == (64, 80, 3)


@pytest.mark.parametrize("data,reason", [(b"", "empty"), (b"hello world", "not an image"),
                                         (b"\xff\xd8\xff\xe0garbage", "corrupt JPEG"),
                                         (b"\x89PNG\r\n\x1a\n" + bytes(40), "truncated PNG")])
def test_rejects(data, reason):
    with pytest.raises(images.Reject, match=reason):
        images.decode_rgb(data)


@pytest.mark.parametrize("decode", [images.decode_rgb, images.decode_bgr])
def test_an_error_after_libjpegs_extraneous_bytes_warning_is_a_reject(decode):
    """The APP0 marker's second byte zeroed: libjpeg warns of extraneous bytes before the next marker, and then
    fails without its warnings as errors too; that failure is the file's one sentence, not a ValueError."""
    data = bytearray(jpeg(smooth(64, 64)))
    assert data[2:4] == b"\xff\xe0"
    data[3] = 0
    with pytest.raises(images.Reject, match="damaged JPEG.*extraneous bytes"):
        decode(bytes(data))


def test_dct_reduction_keeps_shorter_side_at_least_min_side():
    data = jpeg(smooth(1536, 2048))
    assert images.decode_rgb(data, 256).shape == (384, 512, 3)  # 1/4; 1/8 would give 192 < 256
    assert images.decode_rgb(data, 0).shape == (1536, 2048, 3)
    assert images.decode_rgb(jpeg(smooth(300, 400)), 256).shape == (300, 400, 3)


def pink_noise(side, seed=0):
    """A photograph-like test picture: 1/f amplitude spectrum, every scale present."""
    rng = np.random.default_rng(seed)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side), indexing="ij"))
    spectrum = np.fft.fft2(rng.normal(size=(3, side, side))) / np.maximum(f, 1 / side)
    img = np.fft.ifft2(spectrum).real.transpose(1, 2, 0)
    return np.clip((img - img.mean()) / img.std() * 50 + 128, 0, 255).astype(np.uint8)


def lanczos_reference(square, size):
    """Antialiased Lanczos on float pixels (PIL widens the kernel by the shrink ratio)."""
    return np.stack([np.asarray(Image.fromarray(square[..., c].astype(np.float32), "F").resize(
        (size, size), Image.LANCZOS)) for c in range(3)], axis=-1)


@pytest.mark.parametrize("side", [300, 375, 500])
def test_area_shrink_below_2x_is_a_box_average_of_cubic_2x_and_beats_inter_area(side):
    square = pink_noise(side, seed=side)
    out = images.center_square(square, 256)
    double = cv2.resize(square, (512, 512), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    box = double.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert out.shape == (256, 256, 3) and np.abs(out - box).max() <= 0.5 + 1e-9
    ref = lanczos_reference(square, 256)
    plain_area = cv2.resize(square, (256, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(out - ref).mean() < np.abs(plain_area - ref).mean()


def test_center_square_is_the_central_patch():
    img = smooth(60, 100)
    assert (images.center_square(img, 60) == img[:, 20:80]).all()  # no resize needed: exact crop
    tall = smooth(90, 50)
    out = images.center_square(tall, 25)
    ref = cv2.resize(tall[20:70], (25, 25), interpolation=cv2.INTER_AREA)
    assert (out == ref).all()
    up = images.center_square(smooth(20, 30), 40)  # enlarging: cubic
    assert up.shape == (40, 40, 3)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), mode=st.sampled_from(["RGB", "L", "CMYK"]),
       subsampling=st.sampled_from([0, 1, 2]), quality=st.integers(30, 100), min_side=st.sampled_from([0, 8, 40]),
       seed=st.integers(0, 2 ** 16))
def test_decode_rgb_is_decode_bgr_in_rgb_order(h, w, mode, subsampling, quality, min_side, seed):
    """The loaders' RGB decode is prepare's BGR decode with the channels reversed, pixel for pixel, on every path
    (libjpeg-turbo for grey and colour JPEGs, OpenCV for CMYK and PNG, DCT-scaled or not)."""
    buf = io.BytesIO()
    Image.fromarray(smooth(h, w, seed)).convert(mode).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    data = buf.getvalue()
    rgb, bgr = images.decode_rgb(data, min_side), images.decode_bgr(data, min_side)
    assert rgb.dtype == np.uint8 and rgb.shape == bgr.shape and rgb.shape[2] == 3
    assert np.array_equal(rgb, bgr[..., ::-1])
    ok, png = cv2.imencode(".png", bgr)
    assert np.array_equal(images.decode_rgb(png.tobytes()), rgb)  # the OpenCV path: the same pixels
