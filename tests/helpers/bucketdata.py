"""A data dir in the test S3 server, read back without alexnet-pipe's own remote code (boto3), and what a data dir
holds, record for record, to compare two of them."""
from __future__ import annotations

from pathlib import Path

from alexnet_pipe import shards


def split_url(url: str) -> tuple[str, str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def keys(server, url: str) -> list[str]:
    """Every object under url, relative to it."""
    bucket, prefix = split_url(url)
    found = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return sorted(o["Key"][len(prefix) + 1:] for o in found)


def download(server, url: str, dest: Path) -> Path:
    bucket, prefix = split_url(url)
    client = server.client()
    for rel in keys(server, url):
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, f"{prefix}/{rel}", str(path))
    return dest


def delete(server, url: str, rel: str) -> None:
    bucket, prefix = split_url(url)
    server.client().delete_object(Bucket=bucket, Key=f"{prefix}/{rel}")


def snapshot(data: Path) -> dict:
    """manifest, rejects.jsonl's bytes and every split's (key, value) records in manifest order."""
    manifest = shards.read_manifest(data)
    records = {split: [kv for d in shards.shard_dirs(data, split, manifest) for kv in shards.iter_records(d)]
               for split in manifest["splits"]}
    return {"manifest": manifest, "rejects": (data / "rejects.jsonl").read_bytes(), "records": records}
