"""Shared fixtures: everything is generated here, nothing is downloaded. Shared plain functions live in helpers/."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _has_dali() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace at all
        return False


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; `dali` tests need NVIDIA DALI, which installs on Linux only (macOS, Windows and
    CPU-only installs run the rest of the suite)."""
    missing = {"gpu": None if _has_cuda() else "needs CUDA",
               "dali": None if _has_dali() else "needs NVIDIA DALI (pip install nvidia-dali-cuda130; Linux only)"}
    for item in items:
        for marker, reason in missing.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
        if MOUNTING_FIXTURES & set(getattr(item, "fixturenames", ())):  # -m "not mount" leaves them out
            item.add_marker(pytest.mark.mount)


# the fixtures that mount a tmpfs (helpers.mounts.require_tmpfs): the tests using them are marked `mount`
MOUNTING_FIXTURES = {"small_disk", "read_only", "hostile_world"}


@pytest.fixture()
def small_disk(tmp_path):
    """A 20 MB tmpfs, for the full-disk tests of prepare, the shard writer, stats and checkpoints (helpers.mounts:
    a mount that fails is a failure; these tests are marked `mount`)."""
    from helpers.mounts import require_tmpfs, unmount
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    require_tmpfs(mnt, "20M")
    yield mnt
    unmount(mnt)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """The loader tests' data dirs, raw and JPEG (helpers.loaders.build_data), built once per module that asks."""
    from helpers.loaders import build_data  # cv2, lmdb and the loaders wing only where a test asks for them
    root = tmp_path_factory.mktemp("pipe")
    return {enc: build_data(root / enc, enc) for enc in ("raw", "jpeg")}


@pytest.fixture(scope="session")
def s3_server():
    """One local S3 server (moto) for the session; tests take a fresh bucket each through `s3`."""
    pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    from helpers.s3server import S3Server
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture()
def s3(s3_server, monkeypatch):
    """(the server, a new empty bucket's s3:// URL), with this process's AWS variables pointing at the server
    (subprocesses started by the test inherit them)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server, f"s3://{s3_server.new_bucket()}"
