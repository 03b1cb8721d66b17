"""The `alexnet-pipe` command group.

Subcommands are imported only when they run, so `alexnet-pipe --help` does not pay for
torch or DALI, and `prepare` works on a machine without torch.
"""
from __future__ import annotations

import click

from alexnet_pipe import __version__
from alexnet_pipe_cli.lazy import LazyGroup

# name -> "module:attribute"; the module is imported only when the command runs.
COMMANDS = {
    "sample-data": ("alexnet_pipe_cli.sample_data:sample_data", "Write the built-in synthetic ImageNet-layout tree."),
    "prepare": ("alexnet_pipe_cli.prepare:prepare", "Raw ImageNet -> sharded Caffe-compatible LMDB."),
    "pull": ("alexnet_pipe_cli.pull:pull", "Copy a data dir from a bucket (s3://, gs://) to a local dir."),
    "info": ("alexnet_pipe_cli.prepare:info", "Print what a data dir holds."),
    "verify": ("alexnet_pipe_cli.prepare:verify", "Decode every record and check counts and checksums."),
    "stats": ("alexnet_pipe_cli.stats:stats", "Mean image and RGB PCA eigenpairs of the training set."),
    "train": ("alexnet_pipe_cli.train:train", "Train AlexNet (DDP, DALI or torch loader)."),
    "evaluate": ("alexnet_pipe_cli.evaluate:evaluate", "Top-1/top-5 error of one or more checkpoints."),
    "bench": ("alexnet_pipe_cli.bench:bench", "Benchmarks: prepare, loader, train step."),
    "viz": ("alexnet_pipe_cli.viz:viz", "Pictures: augment, filters, neighbors, curves."),
    "demo": ("alexnet_pipe_cli.demo:demo", "The whole job on the built-in sample data."),
}


# Every option can also come from the environment: ALEXNET_PIPE_<COMMAND>_<OPTION> (ALEXNET_PIPE_TRAIN_MAX_STEPS=100,
# ALEXNET_PIPE_BENCH_TRAIN_STEPS=5); a given option wins. Site defaults, and how the docs test shortens runs.
@click.group(cls=LazyGroup, lazy_commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "ALEXNET_PIPE"})
@click.version_option(__version__, prog_name="alexnet-pipe")
def cli():
    """AlexNet (NIPS 2012) from the raw ImageNet download to a trained model.

    \b
    alexnet-pipe sample-data ./sample     # small synthetic ImageNet-layout tree
    alexnet-pipe prepare ./sample         # -> ./alexnet-data (shards + manifest)
    alexnet-pipe stats --pca              # mean image + RGB PCA eigenpairs
    alexnet-pipe train --gpus 2           # DALI + DDP
    """
