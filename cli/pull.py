"""pull: a data dir in a bucket -> a local copy for training nodes."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("url")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Files fetched at a time (one stream carries a fraction of a node's bandwidth).")
def pull(url, directory, jobs):
    """Copy a data dir from a bucket to a local dir; checks every shard against the manifest.

    Resumes a partial pull; never replaces or deletes a local file it did not write.

    \b
    alexnet-pipe pull s3://bucket/alexnet-data /local/nvme/alexnet-data --jobs 8
    """
    from alexnet_pipe.core.errors import UserError
    from alexnet_pipe.core.remote import is_url
    from alexnet_pipe.ingest.pull import pull as run_pull
    if not is_url(url):
        raise UserError(f"{url} is no bucket URL (s3://bucket/path, gs://...): copy a local data dir with cp or rsync")
    done = run_pull(url, directory, jobs=jobs)
    mb = done["bytes"] / 1e6
    click.echo(f"pulled {len(done['fetched'])} files ({mb:.1f} MB) in {done['seconds']:.1f} s "
               f"({mb / max(done['seconds'], 1e-9):.0f} MB/s); {len(done['kept'])} files were here already "
               "and match the bucket")
    click.echo(f"{directory} is ready: alexnet-pipe verify --data {directory}")
