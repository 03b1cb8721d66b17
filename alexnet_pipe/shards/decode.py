"""One pass over the decoded records of a list of shards, in key order, each record exactly once.

DALI reads and decodes when it is importable (``fn.readers.caffe`` + ``fn.decoders.image``, on the
CPU or, with ``device="cuda"``, the "mixed" GPU decoder); otherwise OpenCV decodes what
``shards.iter_records`` reads.  Both yield the same thing: batches of ``(B, H, W, 3)`` uint8 RGB
images and ``(B,)`` int64 labels.  ``stats --recompute`` and the loader benchmark's decode-only
figure use it.

Raw (non-encoded) records are this project's layout, HWC RGB (docs/format.md), unless
``raw_layout="chw_bgr"``: Caffe's own ``convert_imageset`` without ``--encoded`` writes planar BGR.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from alexnet_pipe.core.devices import DEVICES, dali_device
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.shards.codec import Datum
from alexnet_pipe.shards.lmdbfile import check_lmdb, iter_records
from alexnet_pipe.shards.records import read_datum

# DALI opens each LMDB with the map size stored in its meta page (it sets none itself) and maps that
# much address space per shard. x86-64 gives a process 128 TiB; shards written with a 1 TiB map (this
# tool before it grew maps from 64 MiB, Caffe's convert_imageset) stop at the 127th env with "LMDB
# Error: Invalid argument" (measured: 126 open, docs/format.md). A reader keeps its shards' maps under
# half the address space, so that a train and a val reader and the rest of the process still fit.
USER_ADDRESS_SPACE = 128 << 40
DALI_LMDB_ADDRESS_BUDGET = USER_ADDRESS_SPACE // 2

RAW_LAYOUTS = ("hwc_rgb", "chw_bgr")
READER_NAME = "Reader"


@dataclasses.dataclass(frozen=True)
class ShardProbe:
    """What the first record of the first shard says about all of them."""
    encoded: bool
    height: int
    width: int


def probe(shard_dirs: Sequence[Path]) -> ShardProbe:
    """Read the first record: encoded or raw, and the stored size."""
    for shard in shard_dirs:
        for key, value in iter_records(shard):
            datum = read_datum(shard, key, value)
            return ShardProbe(datum.encoded, datum.height, datum.width)
    raise UserError(f"the shards {', '.join(str(s) for s in shard_dirs[:3])} hold no records")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_devices() -> int:
    """CUDA devices DALI can see (0 without DALI, a driver or a GPU); imports no torch."""
    try:
        from nvidia.dali import backend
        return int(backend.GetCUDADeviceCount())
    except (ImportError, RuntimeError, OSError):
        return 0


def iter_decoded(shard_dirs: Sequence[Path], *, batch_size: int = 64, device: str = "cpu",
                 limit: int | None = None, backend: str = "auto", raw_layout: str = "hwc_rgb",
                 num_threads: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (images uint8 (B,H,W,3) RGB, labels int64 (B,)) over the records in key order.

    The shards are read in the order given; `limit` stops after that many records (the first
    ones in key order).  backend: "auto" (DALI if importable), "dali" or "opencv".
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    if raw_layout not in RAW_LAYOUTS:
        raise ValueError(f"raw_layout must be one of {RAW_LAYOUTS}, not {raw_layout!r}")
    shard_dirs = [Path(s) for s in shard_dirs]
    if limit is not None and limit <= 0:
        return
    use_dali = backend == "dali" or (backend == "auto" and dali_available())
    if use_dali:
        yield from _iter_dali(shard_dirs, batch_size, device, limit, raw_layout, num_threads)
    elif backend in ("auto", "opencv"):
        yield from _iter_opencv(shard_dirs, batch_size, limit, raw_layout)
    else:
        raise ValueError(f"backend must be auto, dali or opencv, not {backend!r}")


# --- DALI ---------------------------------------------------------------------------

def dali_reader_groups(shard_dirs: Sequence[Path], budget: int = DALI_LMDB_ADDRESS_BUDGET) -> list[list[Path]]:
    """Consecutive groups of shards whose LMDB maps fit `budget` together: one DALI reader each,
    one after the other. Reading each meta page also refuses a truncated shard before DALI maps it
    (which would be SIGBUS)."""
    groups: list[list[Path]] = []
    used = 0
    for shard in shard_dirs:
        size = check_lmdb(shard).map_size
        if not groups or used + size > budget:  # a shard over the budget alone still gets a group
            groups.append([])
            used = 0
        groups[-1].append(Path(shard))
        used += size
    return groups


def check_dali_can_open(shard_dirs: Sequence[Path], budget: int = DALI_LMDB_ADDRESS_BUDGET) -> None:
    """For a reader that must open every shard at once (a shuffling loader): one sentence where their
    maps do not fit one process's address space, or where a shard is truncated (DALI would SIGBUS)."""
    total = sum(check_lmdb(s).map_size for s in shard_dirs)
    if total > budget:
        raise UserError(f"the {len(shard_dirs)} shards under {Path(shard_dirs[0]).parent} reserve "
                        f"{total / 2**40:.0f} TiB of address space in DALI (their LMDB map size, set when they "
                        f"were written), more than the {budget / 2**40:.0f} TiB one process can spare: "
                        "write them again with this version (`alexnet-pipe prepare --overwrite`, maps that fit "
                        "the data) or use --loader torch")


def dali_error_cause(exc: BaseException) -> str:
    """The line of a DALI error that says what went wrong (LMDB's message, a missing file), not the
    'Critical error when building pipeline' that heads it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for marker in ("LMDB Error", "Assert on", "rror"):
        found = [line for line in lines if marker in line and not line.startswith("Critical error")]
        if found:
            return found[0]
    return lines[0] if lines else type(exc).__name__




def dali_paths(shard_dirs: Sequence[Path]) -> list[str]:
    """The shard paths as DALI takes them: it passes paths to C++ as UTF-8, so a folder whose name is not UTF-8
    (bytes a Latin-1 system wrote) is one sentence instead of DALI's "Unsupported argument type"."""
    paths = [str(s) for s in shard_dirs]
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            raise UserError(f"{shown} is not a UTF-8 name, and NVIDIA DALI opens only UTF-8 paths: rename the "
                            "folder to a UTF-8 name") from None
    return paths


def dali_reader(shard_dirs: Sequence[Path]):
    """The reader half: encoded bytes (or flat raw pixels) and labels, in key order, no shuffle.

    pad_last_batch repeats the last record to fill the last batch; the consumer drops the
    repeats using the reader's epoch size, so nothing is doubled.
    """
    from nvidia.dali import fn
    return fn.readers.caffe(path=dali_paths(shard_dirs), random_shuffle=False,
                            pad_last_batch=True, name=READER_NAME)


def decoder_options(device: str, fancy_upsampling: bool = True) -> dict:
    """device and output arguments of DALI's image decoders for a pipeline on `device` ("cpu" | "cuda").

    On the GPU, DALI's default chroma upsampling is not libjpeg-turbo's "fancy" (smoothed) one that
    prepare, OpenCV and DALI's CPU decoder use: on an H100 that moved decoded 4:2:0 pixels by 14 grey
    levels on average on noisy test images. fancy_upsampling=True asks nvJPEG for libjpeg-turbo's,
    so GPU pixels (statistics, training) match the stored ones up to IDCT rounding.
    """
    from nvidia.dali import types
    options = {"device": dali_device(device, decoder=True), "output_type": types.RGB}
    return options if device == "cpu" else {**options, "jpeg_fancy_upsampling": fancy_upsampling}


def dali_decode(data, *, encoded: bool, device: str, fancy_upsampling: bool = True):
    """The processing half: JPEG/PNG bytes -> HWC RGB uint8 (raw records pass through)."""
    if not encoded:
        return data
    from nvidia.dali import fn
    return fn.decoders.image(data, **decoder_options(device, fancy_upsampling))


def build_decode_pipeline(shard_dirs: Sequence[Path], *, batch_size: int, device: str,
                          encoded: bool, num_threads: int | None = None, fancy_upsampling: bool = True):
    """A built DALI pipeline whose outputs are (decoded images, labels)."""
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=num_threads or min(4, os.cpu_count() or 1),
                  device_id=None if device == "cpu" else 0, prefetch_queue_depth=2)
    def decode_pipeline():
        data, labels = dali_reader(shard_dirs)
        return dali_decode(data, encoded=encoded, device=device, fancy_upsampling=fancy_upsampling), labels

    pipe = decode_pipeline()
    pipe.build()
    return pipe


def _iter_dali(shard_dirs, batch_size, device, limit, raw_layout, num_threads):
    if device != "cpu" and cuda_devices() == 0:  # else DALI's own assertion, as a traceback
        raise UserError("decoding on the GPU needs a CUDA device, and DALI sees none here: use --device cpu")
    groups = dali_reader_groups(shard_dirs)
    info = probe(shard_dirs)
    if limit is not None:
        batch_size = max(1, min(batch_size, limit))
    for group in groups:
        for batch in _iter_dali_group(group, batch_size, device, limit, raw_layout, num_threads, info):
            yield batch
            if limit is not None:
                limit -= len(batch[0])
        if limit is not None and limit <= 0:
            return


def _iter_dali_group(shard_dirs, batch_size, device, limit, raw_layout, num_threads, info):
    """One DALI reader over shards that fit the address-space budget; it is gone (its LMDB maps
    released) before the next group's reader opens."""
    pipe = build_decode_pipeline(shard_dirs, batch_size=batch_size, device=device,
                                 encoded=info.encoded, num_threads=num_threads)
    try:
        remaining = pipe.epoch_size(READER_NAME)
        if limit is not None:
            remaining = min(remaining, limit)
        while remaining > 0:
            images, labels = pipe.run()
            take = min(remaining, batch_size)
            batch = _to_numpy(images, take, info, raw_layout)
            yield batch, np.array([int(np.asarray(labels[i]).ravel()[0]) for i in range(take)], np.int64)
            remaining -= take
    finally:
        del pipe


def _to_numpy(tensors, take: int, info: ShardProbe, raw_layout: str) -> np.ndarray:
    if hasattr(tensors, "as_cpu"):
        tensors = tensors.as_cpu()
    arrays = [np.asarray(tensors[i]) for i in range(take)]
    if info.encoded:
        return np.stack([_check_shape(a, info) for a in arrays])
    return np.stack([_raw_pixels(a, info, raw_layout) for a in arrays])


# --- OpenCV fallback ------------------------------------------------------------------

def _iter_opencv(shard_dirs, batch_size, limit, raw_layout):
    info = probe(shard_dirs)
    images, labels, seen = [], [], 0
    for shard in shard_dirs:
        for key, value in iter_records(shard):
            datum = read_datum(shard, key, value)
            images.append(_decode_datum(datum, info, raw_layout))
            labels.append(datum.label)
            seen += 1
            if len(images) == batch_size or seen == limit:
                yield np.stack(images), np.array(labels, np.int64)
                images, labels = [], []
            if seen == limit:
                return
    if images:
        yield np.stack(images), np.array(labels, np.int64)


def _decode_datum(datum: Datum, info: ShardProbe, raw_layout: str) -> np.ndarray:
    if not datum.encoded:
        return _raw_pixels(np.frombuffer(datum.data, np.uint8), info, raw_layout)
    import cv2
    bgr = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"a record of {info.height}x{info.width} images does not decode")
    return _check_shape(np.ascontiguousarray(bgr[..., ::-1]), info)


# --- shared ---------------------------------------------------------------------------

def _raw_pixels(flat: np.ndarray, info: ShardProbe, raw_layout: str) -> np.ndarray:
    h, w = info.height, info.width
    if flat.size != h * w * 3:
        raise UserError(f"a raw record holds {flat.size} bytes, not {h}x{w}x3 as the first record says")
    if raw_layout == "chw_bgr":
        return np.ascontiguousarray(flat.reshape(3, h, w).transpose(1, 2, 0)[..., ::-1])
    return flat.reshape(h, w, 3)


def _check_shape(image: np.ndarray, info: ShardProbe) -> np.ndarray:
    if image.shape != (info.height, info.width, 3):
        raise UserError(f"a record decodes to {image.shape}, not ({info.height}, {info.width}, 3) "
                        "as the first record says: the images must all have one size")
    return image

