"""Options that take a local path or an object store URL (s3://bucket/imagenet, gs://..., any fsspec URL)."""
from __future__ import annotations

import click


class PathOrURL(click.Path):
    """A click.Path with its checks for a local path; a URL passes as a string, checked when it is read (its
    store is asked once, by the command, not by the option parser)."""

    name = "path_or_url"

    def convert(self, value, param, ctx):
        from alexnet_pipe.core.remote import is_url
        if isinstance(value, str) and is_url(value):
            return value
        return super().convert(value, param, ctx)
