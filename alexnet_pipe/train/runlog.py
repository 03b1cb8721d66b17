"""What a run tells: RUN/settings.json, RUN/metrics.jsonl (and with --tensorboard the same scalars in
RUN/tensorboard/), the progress display and messages (rank 0 only), and the per-row meter of loss, throughput
and data wait. This module owns those two files: their names are spelled here alone, and every reader goes
through `settings_path` / `read_settings` and `metrics_path` / `read_metrics`."""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, create_model

from alexnet_pipe.core import metadata
from alexnet_pipe.core.metadata import Strict
from alexnet_pipe.train.config import TrainSettings, check, opt_of, settings_from_dict
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.files import atomic_write, write_json_atomic
from alexnet_pipe.core.progress import Progress


SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.jsonl"


def settings_path(run: Path) -> Path:
    return Path(run) / SETTINGS_FILE


def metrics_path(run: Path) -> Path:
    return Path(run) / METRICS_FILE


class RunLog:
    """RUN/settings.json and RUN/metrics.jsonl, written by rank 0 only; other ranks get a no-op."""

    def __init__(self, run: Path, enabled: bool):
        self.run, self.enabled = Path(run), enabled
        self.metrics = metrics_path(self.run)
        self.bar: Progress | None = None
        self.board = None  # the TensorBoard writer with --tensorboard (rank 0)

    def start(self, settings: TrainSettings, resumed_step: int) -> None:
        """Keep only rows up to the step we continue from: a crash after the last checkpoint left later rows.
        Rewritten atomically, so a crash at this moment cannot lose the history."""
        if not self.enabled:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(settings_path(self.run), asdict(settings))
        rows = read_metrics(self.run) if self.metrics.exists() else []
        with atomic_write(self.metrics) as f:
            f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= resumed_step)
        if settings.tensorboard:
            self.board = tensorboard_writer(self.run / "tensorboard", resumed_step)

    def row(self, **values) -> None:
        """One metrics row: a line of metrics.jsonl and, with --tensorboard, the same scalars at its step."""
        if not self.enabled:
            return
        with open(self.metrics, "a") as f:
            f.write(json.dumps(values) + "\n")
        if self.board is not None:
            for key, value in values.items():
                if key != "step":
                    self.board.add_scalar(key, value, values["step"])
            self.board.flush()  # live curves: a row every --log-every steps, not every two minutes

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def begin_epoch(self, epoch: int, steps: int, done: int) -> None:
        """The epoch's progress display (steps), starting at `done` for a resumed epoch."""
        self.bar = Progress(steps, f"epoch {epoch + 1}", unit="step", enabled=self.enabled, initial=done)

    def advance(self, steps: int, note: str) -> None:
        if self.bar is not None:
            self.bar.update(steps, note)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def tensorboard_writer(folder: Path, resumed_step: int):
    """torch's SummaryWriter on `folder`. A resumed run purges the events after its checkpoint's step, as
    metrics.jsonl drops those rows: TensorBoard's readers discard them (a SessionLog START at the step)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'alexnet-pipe[tensorboard]' "
                        "(or train without --tensorboard; `alexnet-pipe viz curves` draws metrics.jsonl)") from None
    return SummaryWriter(str(folder), purge_step=resumed_step + 1 if resumed_step else None)


_FROM_TRAIN = "pass a run dir that `alexnet-pipe train` wrote"
NonNegative = Annotated[float, Field(ge=0)]


class MetricsRow(Strict):
    """One line of metrics.jsonl: a training row (loss ...), an evaluation (top-1 ...), or an event. A key may be
    absent (rows of each kind have their own), never null: the default below is not validated, a null is."""
    step: Annotated[int, Field(ge=0)]
    epoch: NonNegative = None
    lr: NonNegative = None
    loss: float = None
    images_per_sec: NonNegative = None
    data_wait_fraction: Annotated[float, Field(ge=0, le=1)] = None
    top1_error: Annotated[float, Field(ge=0, le=1)] = None
    top5_error: Annotated[float, Field(ge=0, le=1)] = None
    images: Annotated[int, Field(ge=0)] = None
    event: str = None
    changed: dict[str, str | int | float | bool | list | None] = None


def read_metrics(run: Path) -> list[dict]:
    """RUN/metrics.jsonl rows, each checked (MetricsRow); a last row cut by a killed run is skipped (with a
    note), any other bad row raises UserError naming the line and the field."""
    path = metrics_path(run)
    text = metadata.read_text(path, "the metrics `alexnet-pipe train` writes", _FROM_TRAIN)
    lines, rows = text.splitlines(), []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = metadata.parse_json(line)
        except ValueError as exc:
            if n == len(lines) and not text.endswith("\n"):  # killed mid-write: rows are whole lines
                print(f"note: skipped the unfinished last line {n} of {path}", file=sys.stderr)
                break
            raise UserError(f"{path} is not JSON lines (line {n}: {exc}); {_FROM_TRAIN}") from None
        try:
            rows.append(metadata.check_model(row, MetricsRow, path, "a metrics row", _FROM_TRAIN))
        except UserError as exc:
            raise UserError(str(exc).replace(f"{path} is", f"{path} line {n} is", 1)) from None
    return rows


@functools.cache
def settings_model() -> type[Strict]:
    """settings.json's model, made from TrainSettings' own fields (types, choices, ranges: config.Opt), so the
    file and the options cannot drift. Every key may be absent: older runs saved fewer settings."""
    fields = {}
    for f in dataclasses.fields(TrainSettings):
        fields[f.name] = (_setting_type(f.type, opt_of(f.name), f.name), f.default)
    return create_model("SettingsFile", __base__=Strict, **fields)


def _setting_type(kind: str, o, name: str):
    limits = {"gt" if o.min_open else "ge": o.min, "lt" if o.max_open else "le": o.max}
    limits = {k: v for k, v in limits.items() if v is not None}
    base = {"str": str, "bool": bool, "int": int, "float": float}.get(kind.split("[")[-1].split(",")[0], str)
    if o.choices and name != "lrn_alpha":  # lrn_alpha also takes its old names (config.settings_from_dict)
        base = Literal[o.choices]
    item = Annotated[base, Field(**limits)] if limits else base
    if kind.startswith("tuple"):
        length = {} if "..." in kind else {"min_length": kind.count(",") + 1, "max_length": kind.count(",") + 1}
        return Annotated[list[item], Field(**length)]
    return item


def read_settings(path: Path, hint: str = _FROM_TRAIN) -> TrainSettings:
    """A run's settings.json (--config, resume), checked field by field; one UserError naming the file."""
    doc = metadata.read_model(Path(path), settings_model(), f"the {SETTINGS_FILE} that `alexnet-pipe train` writes",
                              hint)
    return checked_settings(doc, path, hint)


def checked_settings(doc: dict, where, hint: str) -> TrainSettings:
    """TrainSettings from a checked document, with config.check's rules besides; UserError naming `where`."""
    try:
        return check(settings_from_dict(doc))
    except UserError as exc:
        raise UserError(f"{where} holds settings that are not allowed ({exc}): {hint}") from None


class Meter:
    """Loss, step count, data wait and wall time since the last metrics row (loss stays on the device)."""

    def __init__(self, device):
        import torch
        self.loss, self.steps, self.wait, self.t0 = torch.zeros((), device=device), 0, 0.0, time.perf_counter()

    def add(self, loss, waited: float) -> None:
        self.loss += loss
        self.steps += 1
        self.wait += waited

    def flush(self, world: int, global_batch: int) -> dict:
        import torch.distributed as dist
        loss = self.loss.float()
        if world > 1:
            dist.all_reduce(loss)
        total = loss.item()  # waits for the device: the steps queued so far count in this row's time
        elapsed = time.perf_counter() - self.t0
        out = {"loss": total / world / self.steps, "images_per_sec": self.steps * global_batch / elapsed,
               "data_wait_fraction": min(1.0, self.wait / elapsed)}
        self.loss.zero_()
        self.steps, self.wait, self.t0 = 0, 0.0, time.perf_counter()
        return out
