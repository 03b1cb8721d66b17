"""Image bytes <-> 8-bit pixels, by content: prepare's inputs (any format) and the records' JPEGs.

OpenCV does the decoding (libjpeg-turbo, libpng): it is several times faster than Pillow here
and can downscale JPEGs in the DCT domain while decoding (IMREAD_REDUCED_*), which is where
most of prepare's time goes for large photographs.
"""
from __future__ import annotations

import struct

import cv2
import numpy as np

from alexnet_pipe.shards.strips import restart_interval, rows_jpeg

_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_FLAGS = cv2.IMREAD_IGNORE_ORIENTATION  # as PIL/torchvision/Caffe-era pipelines: EXIF is not applied
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_MAGIC = [(b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"), (b"BM", "bmp"),
          (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"RIFF", "webp")]


class Reject(Exception):
    """An input that cannot become a record; the message is the reason listed in rejects.jsonl."""


def sniff(data: bytes) -> str | None:
    """The image format by magic bytes, whatever the file is called."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return None if kind == "webp" and data[8:12] != b"WEBP" else kind
    return None


def jpeg_info(data: bytes) -> tuple[int, int, int, bool]:
    """(height, width, components, complete) from the JPEG markers, without decoding.

    complete is False where the entropy-coded data ends before the EOI marker: libjpeg
    would fill the rest with grey and call it a success, so truncation is caught here.
    """
    pos, n, info = 2, len(data), None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise Reject("corrupt JPEG (bad marker)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _SOF and pos + 10 <= n:
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            info = (h, w, data[pos + 9])
        pos += 2 + length
        if marker == 0xDA:
            # FF D9 cannot occur inside entropy-coded data (FF is always stuffed), so a file
            # ending in EOI after the first scan is complete: no need to walk the scans
            if info is not None and data.endswith(b"\xff\xd9") and n > pos:
                return (*info, True)
            pos = _skip_scan(data, pos)
            if pos < 0:
                return (*(info or (0, 0, 0)), False)
    if info is None:
        raise Reject("corrupt JPEG (no frame header)")
    return (*info, pos + 2 <= n and data[pos + 1] == 0xD9)


def _skip_scan(data: bytes, pos: int) -> int:
    """Position of the marker ending an entropy-coded segment, or -1 if the data ends first."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return -1
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos += 1 if nxt == 0xFF else 2
            continue
        return pos


def _to_bgr8(img: np.ndarray) -> np.ndarray:
    """Any OpenCV decode (gray, BGR, BGRA; 8 or 16 bit) -> contiguous uint8 BGR."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise Reject(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)  # alpha dropped, as PIL's convert("RGB")
    if img.shape[2] == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2BGR)
    return img


def decode_rgb(data: bytes, min_side: int = 0) -> np.ndarray:
    """Decode bytes of any supported format to uint8 RGB (H, W, 3); see decode_bgr.  A JPEG libjpeg-turbo
    decodes straight into RGB (the pixels of BGR reordered: one conversion, its channel offsets swapped), which
    spares the loaders' workers a pass over every image; any other image is OpenCV's BGR, reordered."""
    return _decode(data, min_side, MAX_PIXELS, "RGB")


MAX_PIXELS = 100_000_000  # prepare --max-pixels: 100 MP is 300 MB of BGR; ImageNet's largest is ~30 MP


def header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR or any format PIL reads lazily; None where the header does not say."""
    if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    import io
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            return im.size[1], im.size[0]
    except Exception:  # PIL's own bomb check, or a format it lacks: OpenCV decides
        return None


def check_pixels(h: int, w: int, max_pixels: int) -> None:
    """A decompression bomb (a small file of a huge image) is refused from its header, before decoding."""
    if max_pixels and h * w > max_pixels:
        raise Reject(f"{w}x{h} pixels, over the --max-pixels limit of {max_pixels:,} (raise it to keep the image)")


def decode_bgr(data: bytes, min_side: int = 0, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode bytes of any supported format to uint8 BGR (H, W, 3), OpenCV's own order: prepare
    keeps it up to the JPEG encoder, which wants it too, so no pixel is reordered twice.

    min_side > 0 lets a JPEG be reduced by 2/4/8 in the DCT domain as long as its shorter
    side stays >= min_side (the later resize then starts from fewer pixels). An image over
    max_pixels (0: no limit) is refused from its header.
    """
    return _decode(data, min_side, max_pixels, "BGR")


def _decode(data: bytes, min_side: int, max_pixels: int, order: str) -> np.ndarray:
    """decode_bgr's pixels in `order` ("BGR" or "RGB")."""
    if not data:
        raise Reject("empty file")
    kind = sniff(data)
    if kind is None:
        raise Reject("not an image (unrecognised content)")
    buf = np.frombuffer(data, np.uint8)
    if kind == "jpeg":
        h, w, comps, complete = jpeg_info(data)
        if not complete:
            raise Reject("truncated JPEG (no end-of-image marker)")
        check_pixels(h, w, max_pixels)
        factor = max([f for f in _REDUCED if min(h, w) // f >= min_side > 0], default=1)
        img = _strict_jpeg(data, comps, -(-h // factor), -(-w // factor), order)
        if img is not None and img.size:
            return img  # three uint8 channels in `order` already
        img = cv2.imdecode(buf, (_REDUCED[factor] if factor > 1 else cv2.IMREAD_COLOR) | _FLAGS)
    else:
        if kind == "png" and b"IEND" not in data[-64:]:
            raise Reject("truncated PNG (no IEND chunk)")  # before libpng prints its own complaint
        check_pixels(*(header_size(data, kind) or (0, 0)), max_pixels)
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | _FLAGS)
    if img is None or img.size == 0:
        raise Reject(f"undecodable {kind.upper()} (corrupt or truncated)")
    bgr = _to_bgr8(img)
    return bgr if order == "BGR" else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _strict_jpeg(data: bytes, comps: int, min_h: int, min_w: int, order: str) -> np.ndarray | None:
    """A grey or colour JPEG through libjpeg-turbo with its warnings as errors (simplejpeg): OpenCV hides
    them, and entropy data that ends early decodes to grey there. The pixels are OpenCV's (the same library,
    the same DCT scaling). None where another decoder must try (CMYK, a variant simplejpeg lacks)."""
    import simplejpeg
    if comps not in (1, 3):
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace=order, strict=True, min_height=min_h, min_width=min_w)
    except ValueError as exc:
        warning = str(exc)
    if "extraneous bytes" in warning:  # bytes between the data and a marker: every pixel is there
        try:
            return simplejpeg.decode_jpeg(data, colorspace=order, strict=False, min_height=min_h, min_width=min_w)
        except ValueError as exc:  # an error, not a warning, after those bytes: a damaged file like any other
            raise Reject(f"damaged JPEG (libjpeg: {exc})") from None
    if warning.startswith(("Corrupt JPEG data", "Premature end")):
        raise Reject(f"damaged JPEG (libjpeg: {warning}; OpenCV would fill the rest with grey)")
    return None


def encode_jpeg(bgr: np.ndarray, quality: int, restart_rows: bool = False) -> bytes:
    """JPEG bytes of a BGR image (OpenCV's order, as decode_bgr gives it); `restart_rows`: a restart marker after
    each row of MCUs, so that a reader can decode some rows alone (strips.py: prepare's records)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if restart_rows:
        params += [cv2.IMWRITE_JPEG_RST_INTERVAL, restart_interval(bgr.shape[1])]
    ok, buf = cv2.imencode(".jpg", bgr, params)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def decode_rgb_rows(data: bytes, y0: int, y1: int, height: int) -> tuple[np.ndarray, int]:
    """(RGB pixels of whole rows, top): rows y0 .. y1 of the image are the array's rows y0 - top .. y1 - top.
    A JPEG `height` rows tall with a restart marker per MCU row decodes only the rows around them (strips.py);
    anything else, and a strip libjpeg-turbo warns about, is decode_rgb's whole image (top 0), which says what is
    wrong with it; an image of another height is refused."""
    part = rows_jpeg(data, y0, y1, height) if data[:3] == b"\xff\xd8\xff" else None
    if part is not None:
        import simplejpeg
        try:
            return simplejpeg.decode_jpeg(part[0], colorspace="RGB", strict=True), part[1]
        except ValueError:
            pass
    whole = decode_rgb(data)
    if len(whole) != height:
        raise Reject(f"image shape {whole.shape}, expected {height} rows")
    return whole, 0


def decode_stored_jpeg(data: bytes) -> np.ndarray | None:
    """The pixels a reader gets back from a JPEG record (RGB), or None if they do not decode."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | _FLAGS)
