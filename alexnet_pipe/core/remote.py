"""Object stores (s3://, gs://, any fsspec URL) for the stages that read or write them: one place that tells a URL
from a path, opens this process's file-system handle, retries transient errors and says a permanent one in a
sentence naming the object.

Credentials and endpoints are the store's own standard ones (AWS_* variables and ~/.aws files, including
AWS_ENDPOINT_URL for MinIO, Ceph or R2; GOOGLE_APPLICATION_CREDENTIALS for GCS): nothing is configured here.
fsspec and its back ends (s3fs, gcsfs) are optional (`pip install alexnet-pipe[s3]`) and imported only when a URL
is used, so local runs never load them.
"""
from __future__ import annotations

import errno
import os
import random
import time

from alexnet_pipe.core.errors import UserError

# One retry policy, here: the back ends' own retries are switched off where they can be (s3fs and botocore would
# otherwise retry a refused connection for 10 s under each of our attempts). Users tune it with two variables.
RETRIES_VAR, WAIT_VAR = "ALEXNET_PIPE_REMOTE_RETRIES", "ALEXNET_PIPE_REMOTE_WAIT"
RETRIES = 6            # attempts after the first, for errors a later attempt may not meet
FIRST_WAIT_S = 0.5     # doubled at each retry, with jitter: 0.5, 1, 2, 4, 8, 16 s (~30 s in all)
POOL = 64              # connections per process (botocore's default is 10): ingest.remote_tars reads 32 tars at once
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}  # scheme -> the pip extra that brings its back end


def is_url(location) -> bool:
    """A URL of a store other than the local disk: `s3://b/k`, `gs://b/k`, `memory://x`. A path (also
    `file://...`, which fsspec would map to a path anyway) is not."""
    text = os.fspath(location) if isinstance(location, os.PathLike) else str(location)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme.lower() not in ("file", "local")


def scheme(url: str) -> str:
    return str(url).partition("://")[0].lower()


def join(url: str, *parts: str) -> str:
    return "/".join([str(url).rstrip("/"), *(p.strip("/") for p in parts if p)])


def _import_error(url: str, exc: ImportError) -> UserError:
    extra = EXTRAS.get(scheme(url))
    how = f"pip install 'alexnet-pipe[{extra}]'" if extra else "install the fsspec back end for it"
    return UserError(f"reading {url} needs fsspec's {scheme(url)}:// back end, which is not installed "
                     f"({exc.name or exc}): {how}")


_HANDLES: dict = {}


def _options(url: str) -> dict:
    options = {"skip_instance_cache": True}
    if scheme(url) in ("s3", "s3a"):  # botocore's retries off (ours are below), and a refused host said soon
        options["config_kwargs"] = {"retries": {"total_max_attempts": 1}, "connect_timeout": 10, "read_timeout": 60,
                                    "max_pool_connections": POOL}
    return options


def _policy() -> tuple[int, float]:
    """(retries, first wait) from the environment, where a user set them."""
    try:
        return (int(os.environ.get(RETRIES_VAR, RETRIES)), float(os.environ.get(WAIT_VAR, FIRST_WAIT_S)))
    except ValueError:
        raise UserError(f"${RETRIES_VAR} must be a whole number and ${WAIT_VAR} a number of seconds") from None


def filesystem(url: str):
    """(this process's file system for the URL's store, the URL's path inside it). Handles are per process: a
    forked worker opens its own (an s3fs handle's connection pool and event loop do not survive a fork)."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:
        raise _import_error(url, exc) from None
    # per process, store and endpoint: fsspec's own instance cache ignores the endpoint variables
    key = (os.getpid(), scheme(url), url.split("://", 1)[1].split("/", 1)[0],
           os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_ENDPOINT_URL_S3"))
    if key in _HANDLES:  # every image's read comes here: no new parse of the URL's options, no cache lookup
        fs = _HANDLES[key]
        return fs, fs._strip_protocol(url)
    try:
        fs, path = url_to_fs(url, **_options(url))
    except ImportError as exc:
        raise _import_error(url, exc) from None
    except ValueError as exc:  # "Protocol not known"
        raise UserError(f"{url}: {exc}") from None
    if hasattr(fs, "retries") and scheme(url) in ("s3", "s3a"):
        fs.retries = 1  # s3fs's own loop
    _HANDLES[key] = fs
    return fs, path


# --- errors -----------------------------------------------------------------------------------------------

_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError)
_TRANSIENT_NAMES = ("ConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "EndpointConnectionError",
                    "ServerDisconnectedError", "ClientOSError", "ClientPayloadError", "TimeoutError",
                    "IncompleteRead", "ResponseStreamingError", "SlowDown", "ServiceUnavailable",
                    "InternalError", "RequestTimeout", "ThrottlingException")


def transient(exc: BaseException) -> bool:
    """An error a later attempt may not meet: a refused or dropped connection, a timeout, the store's 5xx or
    slow-down answers. Missing objects, denied access and bad requests are permanent."""
    if isinstance(exc, _PERMANENT):
        return False
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names.intersection(_TRANSIENT_NAMES):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
                                                  errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH):
        return True
    text = str(exc)
    return any(code in text for code in ("500", "502", "503", "504", "SlowDown", "Connection", "timed out"))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "it does not exist"
    if isinstance(exc, PermissionError):
        return "access denied (check the credentials and the bucket's policy)"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def failure(url: str, doing: str, exc: BaseException, attempts: int = 1) -> UserError:
    """The sentence for an operation on an object that failed for good."""
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    return UserError(f"cannot {doing} {url}{tried}: {_reason(exc)}")


def retried(call, url: str, doing: str, retries: int | None = None, wait: float | None = None):
    """call(), again after transient errors with exponential backoff; a permanent error, or the last transient
    one, becomes failure()'s sentence."""
    policy = _policy()
    retries, wait = policy[0] if retries is None else retries, policy[1] if wait is None else wait
    for attempt in range(retries + 1):
        try:
            return call()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted into transient and permanent just below
            if not transient(exc) or attempt == retries:
                raise failure(url, doing, exc, attempt + 1) from None
            time.sleep(wait * 2 ** attempt * random.uniform(0.75, 1.25))
    raise AssertionError("unreachable")


# --- what the stages do -----------------------------------------------------------------------------------

def read_range(url: str, offset: int = 0, size: int = -1) -> bytes:
    """An object's bytes, all (size < 0) or [offset, offset + size), retried."""
    if size == 0:  # an empty range: the stores answer "bytes=n-(n-1)" with the whole object
        return b""
    fs, path = filesystem(url)
    end = None if size < 0 else offset + size

    def read() -> bytes:
        # always a ranged GET ("bytes=0-" for a whole object): one request, where s3fs would first ask a whole
        # object's size (HEAD) to decide whether to fetch it in parallel parts
        try:
            return fs.cat_file(path, start=offset, end=end)
        except OSError as exc:
            if _past_the_end(exc):  # as a local read at or past a file's end (an empty object too): no bytes
                return b""
            raise
    return retried(read, url, "read")


def _past_the_end(exc: OSError) -> bool:
    """The store's answer to a range that starts past the object's end (HTTP 416, S3's InvalidRange)."""
    text = str(exc).lower()
    return "range is not satisfiable" in text or "invalidrange" in text or "416" in text


def put_file(local: str, url: str) -> None:
    fs, path = filesystem(url)
    retried(lambda: fs.put_file(local, path), url, "upload to")


def get_file(url: str, local: str) -> None:
    fs, path = filesystem(url)
    retried(lambda: fs.get_file(path, local), url, "download")


def listing(url: str) -> dict[str, dict]:
    """Every object under url, recursively: {path relative to url: fsspec's info dict (size, ETag ...)}."""
    fs, path = filesystem(url)
    found = retried(lambda: fs.find(path, detail=True), url, "list")
    prefix = path.rstrip("/") + "/"
    return {name[len(prefix):]: info for name, info in found.items() if name.startswith(prefix)}


def listing_pages(url: str, page: int = 1000):
    """Every object under url, recursively, a page at a time (lists of (path relative to url, size)): a caller
    can show progress and keeps no store's info dicts (~1 KB each: 1.3 GB for ImageNet's 1.28 M objects). S3 is
    listed with ListObjectsV2 pages of `page` keys (1000 at most), each page retried; other stores through fsspec's find. Folder
    markers (keys ending in '/', as consoles make) are not objects of the tree."""
    fs, path = filesystem(url)
    if scheme(url) not in ("s3", "s3a"):
        found = retried(lambda: fs.find(path, detail=True), url, "list")
        prefix = path.rstrip("/") + "/"
        yield [(name[len(prefix):], info.get("size") or 0) for name, info in found.items()
               if name.startswith(prefix) and not name.endswith("/")]
        return
    from fsspec.asyn import sync
    bucket, _, key = path.partition("/")
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    ask = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page, **getattr(fs, "req_kw", {})}
    while True:
        page = retried(lambda: sync(fs.loop, fs._call_s3, "list_objects_v2", **ask), url, "list")
        yield [(c["Key"][len(prefix):], c["Size"]) for c in page.get("Contents", []) if not c["Key"].endswith("/")]
        if not page.get("IsTruncated"):
            return
        ask["ContinuationToken"] = page["NextContinuationToken"]


def info(url: str) -> dict:
    """fsspec's info of one object or prefix ('type': 'file' or 'directory', 'size')."""
    fs, path = filesystem(url)
    return retried(lambda: fs.info(path), url, "find")


def open_file(url: str, size: int | None = None, block_size: int = 1 << 16):
    """A seekable read-only file object over the object, reading ahead block_size bytes per request (what tarfile
    needs to read an archive's headers in place). size, where known from a listing, saves a request. Not retried
    here: its requests are made as it is read, so the caller retries the whole reading (remote_tars does)."""
    fs, path = filesystem(url)
    extra = {} if size is None else {"size": size}
    return fs.open(path, "rb", block_size=block_size, cache_type="readahead", **extra)
