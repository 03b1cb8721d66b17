"""`alexnet-pipe bench ...`: benchmarks that report ratios against a baseline measured in the same run."""
import click

from alexnet_pipe_cli.lazy import LazyGroup

BENCH_COMMANDS = {
    "prepare": ("alexnet_pipe_cli.bench_prepare:bench_prepare", "prepare vs a one-process PIL script and bare decode."),
    "loader": ("alexnet_pipe_cli.bench_loader:bench_loader", "Training loader images/s vs decode-only and a torch baseline."),
    "train": ("alexnet_pipe_cli.bench_train:bench_train", "Trainer step time vs a bare torch loop."),
}


@click.group(cls=LazyGroup, lazy_commands=BENCH_COMMANDS)
def bench():
    """Benchmarks. Absolute times on a shared machine are noise: read the ratios."""
