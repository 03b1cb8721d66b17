"""What a run tells: RUN/settings.json, RUN/metrics.jsonl (and with --tensorboard the same scalars in
RUN/tensorboard/), the progress display and messages (rank 0 only), and the per-row meter of loss, throughput
and data wait. This module owns those two files: their names are spelled here alone, and every reader goes
through `settings_path` / `read_settings` and `metrics_path` / `read_metrics`."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from alexnet_pipe.train.config import TrainSettings, settings_from_dict
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.files import atomic_write, write_json_atomic
from alexnet_pipe.core.progress import Progress


SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.jsonl"


def settings_path(run: Path) -> Path:
    return Path(run) / SETTINGS_FILE


def metrics_path(run: Path) -> Path:
    return Path(run) / METRICS_FILE


def read_settings(path: Path) -> TrainSettings:
    """A run's settings.json (or a copy of one, for --config); a file that is not one is one sentence."""
    try:
        return settings_from_dict(json.loads(Path(path).read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise UserError(f"{path} is not the {SETTINGS_FILE} that `alexnet-pipe train` writes ({exc})") from None


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


def read_metrics(run: Path) -> list[dict]:
    """RUN/metrics.jsonl rows; a last row cut by a killed run is skipped (with a note), any other bad row
    raises UserError."""
    path = metrics_path(run)
    text = path.read_text()
    lines, rows = text.splitlines(), []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines) and not text.endswith("\n"):  # killed mid-write: rows are whole lines
                print(f"note: skipped the unfinished last line {n} of {path}", file=sys.stderr)
                break
            raise UserError(f"{path} is not JSON lines (line {n}: {exc.msg}); "
                            "pass a run dir that `alexnet-pipe train` wrote") from None
        if not isinstance(row, dict) or "step" not in row:
            raise UserError(f"{path} line {n} is not a metrics row (no step): "
                            "pass a run dir that `alexnet-pipe train` wrote")
        rows.append(row)
    return rows


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
