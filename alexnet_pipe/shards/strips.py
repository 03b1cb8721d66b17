"""A JPEG record's rows without decoding the whole image: one restart interval per row of MCUs.

prepare writes each record's JPEG with a restart marker after every row of MCUs (`restart_rows`: 16 pixel rows
at 4:2:0, ~50 bytes in all for a 256 px record, 0.3% of it).  A restart marker resets the decoder's DC
predictions, so a run of consecutive rows is a JPEG of its own: the header with the frame's height changed,
those rows' entropy-coded segments with their markers renumbered from 0, and the end marker (`rows_jpeg`).
libjpeg-turbo decodes it to the whole image's pixels except in the strip's first and last pixel row where they
are not the image's own: 4:2:0's "fancy" chroma upsampling blends each row with the chroma row above or below,
which the strip does not have.  So the strip is cut one pixel row wider on each side than asked, and the rows
asked for are the whole image's bit for bit (tests/shards/test_strips.py holds this against the whole decode for
generated images, sizes and samplings).  The torch loader's workers decode only the rows of a view's window:
~73% of a 256 px record's rows for a random-resized crop, where decoding is most of a worker's time; the paper's
224 px crops leave out one MCU row at most and decode whole (docs/performance.md).  DALI's own decoders read
these records as any JPEG.

Anything else (no restart markers, an interval other than one MCU row, a progressive JPEG, a header that is not
a baseline frame's) gives None here, and the caller decodes the whole image as before: records prepared before
this still read.  Damage is found where it is read: a strip libjpeg-turbo warns about falls back to the whole
decode, which names the damage, but damage in rows a strip leaves out goes unread (`verify` decodes every
record whole).
"""
from __future__ import annotations

import re
import struct
import threading

_BASELINE = (0xC0, 0xC1)  # the frames whose single scan restart markers split this way
_EOI = b"\xff\xd9"
# a strip must leave out two MCU rows, and two 4:2:0 rows' worth of pixel rows: finding the markers and copying
# the strip cost about as much as decoding one MCU row of a 256 px record (~20 us), and the rows asked for say
# before the header is read (~5 us) that the paper's 224 px crops, which leave out one at most, decode whole
_LEAST_SAVED, _LEAST_ROWS = 2, 32
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")  # only ever a marker: entropy-coded FF bytes are stuffed (FF 00)


def restart_interval(width: int) -> int:
    """MCUs in one row of a 4:2:0 JPEG (OpenCV's default sampling): the restart interval of one MCU row."""
    return -(-width // 16)


def has_row_restarts(data: bytes, height: int) -> bool:
    """Whether a JPEG `height` rows tall has the restart marker per MCU row that rows_jpeg cuts at (prepare's
    records since 2026-12-04)."""
    return _frame(data, 0, 1, height) is not None


def rows_jpeg(data: bytes, y0: int, y1: int, height: int) -> tuple[memoryview, int] | None:
    """(a JPEG of whole pixel rows whose rows y0 - top .. y1 - top are the image's rows y0 .. y1, top), cut one
    row wider each side than asked where that is not the image's edge.  None where the data is not a baseline
    JPEG `height` rows tall with one restart interval per MCU row, the rows are not the image's, or they leave
    out fewer than two MCU rows or 32 pixel rows.  The JPEG is written into this thread's own buffer: valid until
    the thread's next call (a fresh bytes object of a record's size cost ~13 us here, against ~2 us to reuse one)."""
    if max(y0 - 1, 0) + max(height - y1 - 1, 0) < _LEAST_ROWS:
        return None
    frame = _frame(data, y0, y1, height)
    if frame is None:
        return None
    height, mcu_h, rows, height_at, scan_at = frame
    first, stop = max(y0 - 1, 0) // mcu_h, -(-min(y1 + 1, height) // mcu_h)
    if stop - first > rows - _LEAST_SAVED:
        return None
    ends = _row_ends(data, scan_at, stop if stop < rows else rows - 1)  # the last row ends at the EOI marker
    if ends is None:
        return None
    ends.append(len(data) - len(_EOI))
    rows_tall = min(stop * mcu_h, height) - first * mcu_h
    return _strip(data, height_at, scan_at, ends, first, stop, rows_tall), first * mcu_h


def _strip(data: bytes, height_at: int, scan_at: int, ends: list[int], first: int, stop: int,
           rows_tall: int) -> memoryview:
    """The header (its frame `rows_tall` pixel rows), MCU rows first .. stop - 1's segments, their markers
    renumbered from RST0, and the end marker, in this thread's buffer."""
    begin = scan_at if first == 0 else ends[first - 1] + 2
    body = ends[stop - 1] - begin
    out = _buffer(scan_at + body + len(_EOI))
    source = memoryview(data)
    out[:scan_at] = source[:scan_at]
    struct.pack_into(">H", out, height_at, rows_tall)
    out[scan_at:scan_at + body] = source[begin:begin + body]
    if first % 8:  # the markers inside count from 0 again: RSTn after the strip's row n
        for k in range(first, stop - 1):
            out[ends[k] + 1 + scan_at - begin] = 0xD0 + ((k - first) & 7)
    out[scan_at + body:] = _EOI
    return out


_local = threading.local()


def _buffer(size: int) -> memoryview:
    """The first `size` bytes of this thread's strip buffer (grown as needed)."""
    held = getattr(_local, "buffer", None)
    if held is None or len(held) < size:
        held = _local.buffer = memoryview(bytearray(max(size, 1 << 16)))
    return held[:size]


def _row_ends(data: bytes, scan_at: int, count: int) -> list[int] | None:
    """Where the first `count` MCU rows' entropy-coded segments end (their restart markers), found in order;
    None where a marker is out of sequence or missing (damage: the whole image's decode names it)."""
    ends = []
    if count == 0:
        return ends
    for k, marker in enumerate(_RESTART.finditer(data, scan_at)):
        at = marker.start()
        if data[at + 1] != 0xD0 + (k & 7):
            return None
        ends.append(at)
        if len(ends) == count:
            return ends
    return None


def _frame(data: bytes, y0: int, y1: int, expected: int):
    """(height, MCU height, MCU rows, height offset, scan data offset) of a baseline JPEG whose restart interval
    is one MCU row and whose chroma is at most two rows tall per MCU, where rows y0 .. y1 are its own; else None."""
    header = _header(data)
    if header is None or not data.endswith(_EOI):
        return None
    height, width, hmax, vmax, interval, height_at, scan_at = header
    if vmax > 2 or interval != -(-width // (8 * hmax)) or height != expected or not 0 <= y0 < y1 <= height:
        return None  # a taller chroma context than one row, another interval or height, or rows outside it
    return height, 8 * vmax, -(-height // (8 * vmax)), height_at, scan_at


def _header(data: bytes):
    """(height, width, max h sampling, max v sampling, restart interval, height offset, scan data offset) of a
    baseline JPEG's markers up to its scan's data, where that scan holds every component (the one scan that
    restart markers split into rows); None where a marker is not that."""
    pos, n, frame, interval = 2, len(data), None, 0
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in _BASELINE:
            frame = _frame_header(data, pos)
            if frame is None:
                return None
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or 0xD0 <= marker <= 0xD8 or marker < 2:
            return None  # another kind of frame, or a marker without a length where none belongs
        elif marker == 0xDD and pos + 6 <= n:
            interval = struct.unpack_from(">H", data, pos + 4)[0]
        elif marker == 0xDA:
            if frame is None or not interval or pos + 5 > n or data[pos + 4] != frame[4]:
                return None  # no frame or no interval yet, or a scan of some components only
            height, width, hmax, vmax, _comps, height_at = frame
            return height, width, hmax, vmax, interval, height_at, pos + 2 + length
        pos += 2 + length
    return None


def _frame_header(data: bytes, pos: int):
    """(height, width, max h sampling, max v sampling, components, height offset) of the frame header at `pos`;
    None where its sampling factors are not all 1..4.  One component's MCU is one 8 x 8 block, whatever its
    factors say (libjpeg's rule for a scan of one component)."""
    if pos + 10 > len(data):
        return None
    height, width, comps = struct.unpack_from(">HHB", data, pos + 5)
    sampling = data[pos + 11:pos + 11 + 3 * comps:3]
    if not comps or len(sampling) != comps or not all(1 <= s >> 4 <= 4 and 1 <= s & 15 <= 4 for s in sampling):
        return None
    if comps == 1:
        return height, width, 1, 1, comps, pos + 5
    return height, width, max(s >> 4 for s in sampling), max(s & 15 for s in sampling), comps, pos + 5
