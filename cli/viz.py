"""`alexnet-pipe viz ...`: pictures (PNG, matplotlib)."""
import click

from alexnet_pipe_cli.lazy import LazyGroup

VIZ_COMMANDS = {
    "augment": ("alexnet_pipe_cli.viz_augment:viz_augment", "A grid of augmented training views."),
    "filters": ("alexnet_pipe_cli.viz_model:viz_filters", "The conv1 kernels as the paper's grid."),
    "neighbors": ("alexnet_pipe_cli.viz_model:viz_neighbors", "Nearest training images by fc7 distance."),
    "curves": ("alexnet_pipe_cli.viz_model:viz_curves", "Loss, learning rate and error against epochs."),
}


@click.group(cls=LazyGroup, lazy_commands=VIZ_COMMANDS)
def viz():
    """Pictures of the data, the augmentation and the trained network."""
