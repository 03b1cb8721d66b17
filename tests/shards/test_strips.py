"""A JPEG record's rows decoded alone (shards.strips): the rows asked for are the whole image's, bit for bit, as
OpenCV decodes the whole file; anything that is not a strip JPEG decodes whole; damage in the rows read, and in
the header, is the damaged record's sentence, never a crash."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from alexnet_pipe.shards.codec import Datum
from alexnet_pipe.shards.pixels import Reject, decode_rgb_rows, encode_jpeg
from alexnet_pipe.shards.records import DamagedRecord, record_rows
from alexnet_pipe.shards.strips import rows_jpeg

# (OpenCV's sampling flag, MCU width, MCU height); None: a grey JPEG (one 8 x 8 block per MCU)
SAMPLINGS = {"420": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, 16, 16),
             "422": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422, 16, 8),
             "440": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440, 8, 16),
             "411": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411, 32, 8),
             "444": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, 8, 8), "grey": (None, 8, 8)}


def _picture(seed: int, h: int, w: int) -> np.ndarray:
    """Smooth colour with noise on it: every MCU row differs and the chroma upsampling has edges to blend."""
    rng = np.random.default_rng(seed)
    smooth = cv2.resize(rng.integers(0, 256, (4, 4, 3), np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 25, smooth.shape), 0, 255).astype(np.uint8)


def _jpeg(bgr: np.ndarray, sampling: str, quality: int, rows_per_interval: int = 1) -> bytes:
    """A JPEG with a restart marker every `rows_per_interval` MCU rows (0: none), encoded by OpenCV itself."""
    flag, mcu_w, _ = SAMPLINGS[sampling]
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if rows_per_interval:
        params += [cv2.IMWRITE_JPEG_RST_INTERVAL, rows_per_interval * -(-bgr.shape[1] // mcu_w)]
    if flag is None:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    else:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, flag]
    ok, buf = cv2.imencode(".jpg", bgr, params)
    assert ok
    return buf.tobytes()


def _whole(data: bytes) -> np.ndarray:
    """The reference: OpenCV's decode of the whole file, RGB."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


def _row(low: int, high: int, mcu_h: int):
    """A row in low..high: any, or one at an MCU row's edge (give or take one)."""
    edges = st.tuples(st.integers(0, high // mcu_h), st.integers(-1, 1)).map(lambda kd: kd[0] * mcu_h + kd[1])
    return st.one_of(st.integers(low, high), edges.map(lambda y: min(max(y, low), high)))


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2 ** 16), h=st.integers(1, 120), w=st.integers(1, 90),
       sampling=st.sampled_from(sorted(SAMPLINGS)), quality=st.integers(40, 100), data=st.data())
def test_rows_decoded_alone_are_the_whole_images_rows(seed, h, w, sampling, quality, data):
    jpeg = _jpeg(_picture(seed, h, w), sampling, quality)
    mcu_h = SAMPLINGS[sampling][2]
    y0 = data.draw(_row(0, h - 1, mcu_h), label="y0")  # an MCU row's edge as often as not: where strips are cut
    y1 = data.draw(_row(y0 + 1, h, mcu_h), label="y1")
    rows, top = decode_rgb_rows(jpeg, y0, y1, h)
    assert np.array_equal(rows[y0 - top:y1 - top], _whole(jpeg)[y0:y1])
    assert 0 <= top <= y0 and top + rows.shape[0] <= h  # no row that is not the image's
    first, stop = max(y0 - 1, 0) // mcu_h, -(-min(y1 + 1, h) // mcu_h)  # the MCU rows holding y0 - 1 .. y1 + 1
    if first + -(-h // mcu_h) - stop >= 2 and max(y0 - 1, 0) + max(h - y1 - 1, 0) >= 32:  # worth a strip
        assert (top, rows.shape) == (first * mcu_h, (min(stop * mcu_h, h) - first * mcu_h, w, 3))
    else:
        assert (top, rows.shape) == (0, (h, w, 3))


def test_a_strip_of_the_middle_rows_decodes_only_their_mcu_rows_and_one_pixel_row_each_side():
    jpeg = encode_jpeg(_picture(1, 256, 256), 90, restart_rows=True)
    rows, top = decode_rgb_rows(jpeg, 100, 150, 256)
    assert (top, rows.shape) == (96, (64, 256, 3))  # MCU rows 6..9 hold rows 99..150
    rows, top = decode_rgb_rows(jpeg, 97, 159, 256)  # rows 96 and 159 are only the context of rows 97 and 158
    assert (top, rows.shape) == (96, (64, 256, 3))
    rows, top = decode_rgb_rows(jpeg, 96, 160, 256)  # row 96 needs row 95's context: MCU row 5; 160 that of row 159
    assert (top, rows.shape) == (80, (96, 256, 3))
    assert np.array_equal(rows[96 - 80:160 - 80], _whole(jpeg)[96:160])


@pytest.mark.parametrize("case", ["markers-wrap", "one-row-left-out", "fill-byte", "grey-declared-2x2"])
def test_strips_of_the_cases_generation_seldom_reaches(case):
    """More than 8 MCU rows in a strip (its markers wrap RST7 -> RST0 twice when renumbered), a window leaving
    one MCU row out (not worth a strip: whole), a fill byte before a header marker, and a grey JPEG whose frame
    declares 2x2 sampling (one component: 8 x 8 MCUs all the same)."""
    picture = _picture(10, 256, 200)
    sampling = {"markers-wrap": "422", "one-row-left-out": "420", "fill-byte": "420", "grey-declared-2x2": "grey"}
    jpeg = _jpeg(picture, sampling[case], 90)
    if case == "fill-byte":
        jpeg = jpeg[:2] + b"\xff" + jpeg[2:]
    if case == "grey-declared-2x2":
        sof = jpeg.index(b"\xff\xc0")
        jpeg = jpeg[:sof + 11] + b"\x22" + jpeg[sof + 12:]
    y0, y1, want = {"markers-wrap": (25, 230, (24, 208)),  # 8-row MCUs 3..29 of 32: 26 of them in the strip
                    "one-row-left-out": (32, 254, (0, 256)),  # MCU row 0 alone is left out: whole
                    "fill-byte": (100, 150, (96, 64)), "grey-declared-2x2": (100, 150, (96, 56))}[case]
    rows, top = decode_rgb_rows(jpeg, y0, y1, 256)
    assert (top, len(rows)) == want
    assert np.array_equal(rows[y0 - top:y1 - top], _whole(jpeg)[y0:y1])


def test_a_scan_of_some_components_only_is_not_cut():
    """A baseline file of one scan per component: restart markers do not split all its components into rows."""
    jpeg = bytearray(encode_jpeg(_picture(11, 128, 128), 90, restart_rows=True))
    assert rows_jpeg(bytes(jpeg), 40, 80, 128) is not None
    sos = jpeg.index(b"\xff\xda")
    jpeg[sos + 4] = 1  # the scan header's component count
    assert rows_jpeg(bytes(jpeg), 40, 80, 128) is None


def test_without_the_margin_the_strips_edge_rows_differ_from_the_whole_image():
    """Why rows_jpeg cuts one row wider: 4:2:0's chroma upsampling needs the row beyond each edge."""
    jpeg = encode_jpeg(_picture(2, 256, 256), 90, restart_rows=True)
    part, top = rows_jpeg(jpeg, 33, 143, 256)  # MCU rows 2..8: pixel rows 32..143
    alone = _whole(part)
    whole = _whole(jpeg)
    assert np.array_equal(alone[1:-1], whole[33:143])
    assert not np.array_equal(alone[0], whole[32]) or not np.array_equal(alone[-1], whole[143])


@pytest.mark.parametrize("make", [
    lambda img: _jpeg(img, "420", 90, rows_per_interval=0),  # records prepared before restart markers
    lambda img: _jpeg(img, "420", 90, rows_per_interval=2),  # another interval
    lambda img: cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
    lambda img: cv2.imencode(".png", img)[1].tobytes(),
], ids=["no-markers", "two-rows-per-interval", "progressive", "png"])
def test_anything_else_decodes_whole_and_right(make):
    data = make(_picture(3, 64, 48))
    rows, top = decode_rgb_rows(data, 20, 30, 64)
    assert top == 0 and np.array_equal(rows, _whole(data))


def test_a_truncated_strip_jpeg_is_refused_as_before():
    jpeg = encode_jpeg(_picture(4, 128, 128), 90, restart_rows=True)
    with pytest.raises(Reject, match="truncated"):
        decode_rgb_rows(jpeg[:len(jpeg) // 2], 10, 20, 128)


def test_a_renumbered_restart_marker_is_damage_named_not_garbage_decoded():
    jpeg = bytearray(encode_jpeg(_picture(5, 128, 128), 90, restart_rows=True))
    third = jpeg.index(b"\xff\xd2") + 1  # the marker between MCU rows 2 and 3
    jpeg[third] = 0xD5
    with pytest.raises(Reject, match="damaged JPEG"):
        decode_rgb_rows(bytes(jpeg), 40, 60, 128)


def test_a_chroma_sampled_four_rows_tall_is_not_cut():
    """Upsampling that may reach past one row of context: the frame header's h2v4 is refused, not trusted."""
    jpeg = bytearray(encode_jpeg(_picture(7, 256, 256), 90, restart_rows=True))
    sof = jpeg.index(b"\xff\xc0")
    assert jpeg[sof + 11] == 0x22  # the first component's sampling: h2v2
    assert rows_jpeg(bytes(jpeg), 100, 140, 256) is not None
    jpeg[sof + 11] = 0x24  # 32-row MCUs: rows 99..141 are in MCU rows 3 and 4 of 8, a strip were it trusted
    assert rows_jpeg(bytes(jpeg), 100, 140, 256) is None


@settings(max_examples=200, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10 ** 6)), y0=st.integers(0, 63), rows=st.integers(1, 64))
def test_damaged_bytes_are_a_reject_or_rows_of_the_right_shape_never_a_crash(flips, cut, y0, rows):
    """Bytes flipped anywhere (the header's lengths, sampling factors, markers) or cut short: the strip path
    either gives whole rows of the record's width or the damaged record's sentence, as the whole decode does."""
    jpeg = bytearray(encode_jpeg(_picture(8, 64, 64), 90, restart_rows=True))
    for at, xor in flips:
        jpeg[at % len(jpeg)] ^= xor
    data = bytes(jpeg if cut is None else jpeg[:cut % len(jpeg)])
    y1 = min(y0 + rows, 64)
    try:
        got, top = record_rows("shard-00000", b"00000000_x.JPEG", Datum(data, 0, True, 3, 64, 64), 64, y0, y1)
    except DamagedRecord as exc:
        assert "00000000_x.JPEG" in str(exc)
        return
    assert got.shape[1:] == (64, 3) and 0 <= top <= y0 and y1 <= top + len(got) <= 64


@pytest.mark.parametrize("field, value", [("sampling", 0x00), ("sampling", 0x20), ("sampling", 0x02),
                                          ("height", 0), ("width", 0), ("interval", 0), ("interval", 0xFFFF)])
def test_a_frame_header_field_out_of_range_is_a_damaged_record_not_a_crash(field, value):
    """The fields the strip path divides by or counts with, each set to what no encoder writes (a grey JPEG: its
    one component's sampling is the frame's)."""
    jpeg = bytearray(_jpeg(_picture(9, 64, 64), "grey", 90))
    sof, dri = jpeg.index(b"\xff\xc0"), jpeg.index(b"\xff\xdd")
    at, size = {"sampling": (sof + 11, 1), "height": (sof + 5, 2), "width": (sof + 7, 2),
                "interval": (dri + 4, 2)}[field]
    jpeg[at:at + size] = value.to_bytes(size, "big")
    datum = Datum(bytes(jpeg), 0, True, 3, 64, 64)
    try:
        got, top = record_rows("shard-00000", b"00000000_x.JPEG", datum, 64, 30, 40)
    except DamagedRecord:
        return
    assert got.shape[1:] == (64, 3) and top <= 30 and top + len(got) >= 40


def test_rows_outside_the_image_decode_whole():
    jpeg = encode_jpeg(_picture(6, 64, 64), 90, restart_rows=True)
    for y0, y1 in [(-5, 10), (60, 70), (30, 30)]:
        rows, top = decode_rgb_rows(jpeg, y0, y1, 64)
        assert top == 0 and rows.shape == (64, 64, 3)


@pytest.mark.parametrize("restart_rows", [True, False])
def test_info_notes_jpeg_records_prepared_without_restart_markers(tmp_path, restart_rows):
    from alexnet_pipe.shards.verify import info
    from helpers.shardgen import make_data_dir, random_images
    make_data_dir(tmp_path / "d", {"train": (random_images(4, 64), np.arange(4) % 2)}, 2, 1,
                  restart_rows=restart_rows)
    notes = info(tmp_path / "d")["notes"]
    assert any("no restart marker per MCU row" in n and "--overwrite" in n for n in notes) != restart_rows
