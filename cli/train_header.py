"""What `train` says before it starts: the run dir first, then the settings that shape the run, resolved (the crop,
the loader, the class count, the processes), in a few lines. Every setting is in RUN/settings.json; `--dry-run`
prints them all beside the paper's."""
from __future__ import annotations

from pathlib import Path

from alexnet_pipe.train.config import TrainSettings


def _data_line(s: TrainSettings) -> str:
    if s.loader == "synthetic":
        return f"  data: synthetic tensors, {s.num_classes or 10} classes, crop {s.crop}"
    from alexnet_pipe.shards.manifest import read_manifest
    manifest = read_manifest(Path(s.data))
    records = sum(int(e["records"]) for e in manifest["splits"]["train"]["shards"])
    return (f"  data {s.data}: {len(manifest['classes'])} classes, {records} train images of "
            f"{manifest['settings']['size']} px, crop {s.crop}; loader {s.loader}")


def _length(s: TrainSettings) -> str:
    stop = f", stopping at step {s.max_steps}" if s.max_steps else ""
    evals = ("no evaluation" if not s.eval_every else "evaluating every epoch" if s.eval_every == 1 else
             f"evaluating every {s.eval_every} epochs")
    return f"{s.epochs} epochs{stop}, {evals}"


def header(s: TrainSettings) -> list[str]:
    """The lines `train` prints before it starts, from finalized settings."""
    processes = f"{s.nproc} {'GPU' if s.device == 'cuda' else 'CPU'} process{'es' if s.nproc > 1 else ''}"
    lines = [f"train: run {s.run} (every setting: settings.json there; --dry-run shows them beside the paper's)",
             _data_line(s),
             f"  {processes}, global batch {s.batch_size} ({s.batch_size // s.nproc} per process); {_length(s)}",
             f"  recipe {s.recipe}: {s.arch} x{s.width:g}, lr {s.lr:g} ({s.schedule}"
             f"{f', {s.warmup_epochs:g} warm-up epochs' if s.warmup_epochs else ''}), momentum {s.momentum:g} "
             f"({s.momentum_form}), weight decay {s.weight_decay:g}, init {s.init}, normalize {s.normalize}"]
    if s.resume:
        lines.append(f"  resuming from {'the newest checkpoint' if s.resume == 'latest' else s.resume}")
    return lines
