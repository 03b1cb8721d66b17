"""core.remote against a real S3 protocol server (moto in its own process)."""
from __future__ import annotations

import pytest

from alexnet_pipe.core import remote
from alexnet_pipe.core.errors import UserError


@pytest.mark.parametrize("text, url", [("s3://b/k", True), ("gs://b", True), ("memory://x", True),
                                       ("/data/imagenet", False), ("file:///data", False), ("rel/path", False),
                                       ("C:\\data", False), ("a b://c", False)])
def test_is_url_tells_stores_from_paths(text, url):
    assert remote.is_url(text) is url


def test_reads_lists_and_ranges_through_the_server(s3, tmp_path):
    server, bucket = s3
    server.client().put_object(Bucket=bucket[5:], Key="d/x/a.bin", Body=bytes(range(256)))
    assert remote.read_range(f"{bucket}/d/x/a.bin", 10, 5) == bytes(range(10, 15))
    assert remote.read_range(f"{bucket}/d/x/a.bin") == bytes(range(256))
    listed = remote.listing(f"{bucket}/d")
    assert list(listed) == ["x/a.bin"] and listed["x/a.bin"]["size"] == 256
    (tmp_path / "up").write_bytes(b"abc")
    remote.put_file(str(tmp_path / "up"), f"{bucket}/u/up")
    remote.get_file(f"{bucket}/u/up", str(tmp_path / "down"))
    assert (tmp_path / "down").read_bytes() == b"abc"


def test_a_missing_object_is_one_sentence_naming_it(s3):
    _, bucket = s3
    with pytest.raises(UserError, match=rf"cannot read {bucket}/nope.jpg: it does not exist"):
        remote.read_range(f"{bucket}/nope.jpg")


def test_transient_errors_are_retried_then_named(monkeypatch):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(104, "Connection reset by peer")
        return b"ok"
    assert remote.retried(flaky, "s3://b/k", "read", wait=0) == b"ok" and len(calls) == 3
    with pytest.raises(UserError, match=r"cannot read s3://b/k after 3 attempts: .*reset"):
        remote.retried(lambda: (_ for _ in ()).throw(ConnectionResetError(104, "Connection reset by peer")),
                       "s3://b/k", "read", retries=2, wait=0)
    denied = []
    with pytest.raises(UserError, match="access denied"):
        remote.retried(lambda: denied.append(1) or (_ for _ in ()).throw(PermissionError("AccessDenied")),
                       "s3://b/k", "read", wait=0)
    assert len(denied) == 1  # a permanent error is not retried


def test_a_stopped_server_is_one_sentence(tmp_path, monkeypatch):
    from helpers.s3server import S3Server
    server = S3Server().start()
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    bucket = server.new_bucket()
    server.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    assert remote.read_range(f"s3://{bucket}/k") == b"x"
    server.stop()
    monkeypatch.setenv(remote.RETRIES_VAR, "2")
    monkeypatch.setenv(remote.WAIT_VAR, "0.01")
    with pytest.raises(UserError, match=rf"cannot read s3://{bucket}/k after 3 attempts: Could not connect"):
        remote.read_range(f"s3://{bucket}/k")


def test_botocore_makes_one_attempt_under_ours(s3):
    """Ours is the one retry policy: botocore's own (a refused connection retried for ~10 s) is off."""
    _, bucket = s3
    fs, _ = remote.filesystem(f"{bucket}/k")
    fs.ls(bucket)  # the client is made on first use
    assert fs.s3.meta.config.retries["total_max_attempts"] == 1 and fs.retries == 1
