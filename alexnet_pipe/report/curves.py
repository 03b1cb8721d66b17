"""A run's curves from RUN/metrics.jsonl: training loss, learning rate and validation error against epochs, three
panels of CURVES_FIGSIZE (12 x 4 in) at 100 dpi = 1200 x 400 px."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.report.pictures import figure, save_figure

CURVES_FIGSIZE = (12.0, 4.0)


def read_run_metrics(run: Path) -> list[dict]:
    """RUN/metrics.jsonl rows (train.read_metrics), or one sentence saying what is wrong."""
    from alexnet_pipe.train.runlog import metrics_path, read_metrics
    path = metrics_path(run)
    if not path.is_file():
        raise UserError(f"{run} has no metrics.jsonl: pass the run dir that `alexnet-pipe train` wrote")
    rows = read_metrics(Path(run))
    if not rows:
        raise UserError(f"{path} holds no rows yet: train for at least one logged step")
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pairs = [(float(r["epoch"]), float(r[key])) for r in rows if key in r and "epoch" in r]
    return [e for e, _ in pairs], [v for _, v in pairs]


def curves_figure(rows: list[dict], path: Path, title: str = "") -> tuple[int, int]:
    """Three panels against (fractional) epoch, 12 x 4 in at 100 dpi = 1200 x 400 px: training loss
    (step rows), learning rate on a log axis (step rows), top-1 and top-5 error (eval rows)."""
    fig = figure(CURVES_FIGSIZE)
    loss_ax, lr_ax, err_ax = fig.subplots(1, 3)
    panels = [(loss_ax, [("loss", "training loss")], "loss", "training loss"),
              (lr_ax, [("lr", "learning rate")], "learning rate", "learning rate (log)"),
              (err_ax, [("top1_error", "top-1 error"), ("top5_error", "top-5 error")], "error",
               "validation error (centre crop)")]
    for ax, series, ylabel, heading in panels:
        ax.set_title(heading, fontsize=10)
        drawn = 0
        for key, label in series:
            x, y = _series(rows, key)
            if key == "lr":  # a log axis cannot show 0 (the first warm-up step never is, the rest may be)
                x, y = [a for a, b in zip(x, y) if b > 0], [b for b in y if b > 0]
            if x:
                ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, f"no {ylabel} rows in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if _series(rows, "lr")[0]:
        lr_ax.set_yscale("log")
    if _series(rows, "top1_error")[0]:
        err_ax.set_ylim(0, 1)
        err_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


@dataclasses.dataclass(frozen=True)
class CurvesSettings:
    run: Path
    output: Path


def render_curves(s: CurvesSettings) -> dict:
    """-> {"output", "width", "height", "rows", "evaluations"}."""
    rows = read_run_metrics(s.run)
    width, height = curves_figure(rows, s.output, title=str(s.run))
    return {"output": str(s.output), "width": width, "height": height, "rows": len(rows),
            "evaluations": sum("top1_error" in r for r in rows)}
