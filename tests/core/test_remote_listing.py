"""core.remote's paged listing, which prepare's remote tree is built from, against a real S3 server."""
from __future__ import annotations

from alexnet_pipe.core import remote


def test_every_page_of_a_listing_is_read_and_folder_markers_are_no_objects(s3):
    server, bucket = s3
    client = server.client()
    keys = [f"p/{d}/{i}.bin" for d in ("a", "b/c") for i in range(4)]
    for i, key in enumerate(keys):
        client.put_object(Bucket=bucket[5:], Key=key, Body=b"x" * i)
    client.put_object(Bucket=bucket[5:], Key="p/marker/", Body=b"")  # what a console's "create folder" makes
    client.put_object(Bucket=bucket[5:], Key="pq/beside.bin", Body=b"y")  # shares the prefix's letters only
    pages = list(remote.listing_pages(f"{bucket}/p", page=3))
    assert [len(p) for p in pages] == [3, 3, 2]  # 9 keys under p/ in pages of 3; the marker is not an object
    assert dict(x for p in pages for x in p) == {k[2:]: i for i, k in enumerate(keys)}
