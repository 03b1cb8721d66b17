"""A real S3 protocol server on localhost for the tests (moto's server mode in its own process: the tests talk
HTTP to it through s3fs/botocore exactly as to AWS, and can stop it to see a store go away)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """`python -m moto.server` on a free port; .env holds the variables that point a client at it."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**ENV, "AWS_ENDPOINT_URL": self.url}
        self.proc = None

    def start(self) -> S3Server:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto.server exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise RuntimeError("moto.server did not listen within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_tree(self, folder, url: str) -> None:
        """Every file under a local folder to the same relative keys under an s3:// URL."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client = self.client()
        for root, _dirs, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                key = "/".join(p for p in (prefix.strip("/"), os.path.relpath(path, folder).replace(os.sep, "/")) if p)
                client.upload_file(path, bucket, key)
