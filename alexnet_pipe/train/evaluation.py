"""Top-1/top-5 error of one checkpoint or an ensemble (softmax outputs averaged, the paper's 5- and 7-CNN rows),
with the centre crop or the paper's ten views (four corners + centre, and their reflections); and the trainer's
own evaluation of the model it holds (`evaluate_model`, summed over ranks). Both run the one loop, `error_rates`,
in one precision (precision.py): the trainer's is the run's, evaluate's the checkpoints' own unless told."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.train.precision import PRECISIONS, autocast, resolved


@dataclass(frozen=True)
class EvalSettings:
    checkpoints: tuple[str, ...]
    data: str = "alexnet-data"
    split: str = "val"
    ten_crop: bool = False
    batch_size: int = 128
    loader: str = "auto"
    device: str = "cpu"
    num_threads: int = 2
    precision: str | None = None  # None: the checkpoints' own (precision.py)


def topk_correct(scores, labels, ks=(1, 5)) -> list[int]:
    """How many rows have their label among the k highest scores, for each k (k capped at the class count)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


def average_softmax(models, images, names=None):
    """Mean softmax over models and, for (B, V, 3, H, W) input, over the V views: (B, classes). Given the models'
    `names` (their checkpoints), outputs that are not finite are refused, naming the model: a softmax of them is
    NaN, and NaN scores rank as chance without a word."""
    import torch
    views = images.shape[1] if images.dim() == 5 else 1
    flat = images.flatten(0, 1) if images.dim() == 5 else images
    outputs = [m(flat).float() for m in models]
    for name, out in zip(names or (), outputs):
        if not bool(torch.isfinite(out).all()):
            raise UserError(f"{name} gives outputs that are not finite numbers: its weights come from a run that "
                            "diverged (or were damaged); evaluate a checkpoint of a run that did not")
    probs = torch.stack([torch.softmax(out, dim=1) for out in outputs]).mean(0)
    return probs.view(images.shape[0], views, -1).mean(1)


def error_rates(models, loader, device, precision: str, world: int = 1, progress=None, names=None) -> dict:
    """The one evaluation loop, of the trainer and of `evaluate`: every batch of the loader (centre crops, or ten
    views) through the models in eval mode under `precision`'s autocast, their softmax averaged (one model: its
    own), top-1/top-5 counted and summed over ranks; `progress` (evaluate's display) ticks once a batch. -> {"top1_error", "top5_error", "images"}."""
    import torch
    import torch.distributed as dist
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad(), autocast(precision, device):
        for images, labels in loader.epoch(0):
            c1, c5 = topk_correct(average_softmax(models, images, names), labels.to(device))
            counts += torch.tensor([c1, c5, len(labels)], dtype=torch.float64, device=device)
            if progress is not None:
                progress.update(1)
    if world > 1:
        dist.all_reduce(counts)
    for m, mode in zip(models, was_training):
        m.train(mode)
    n = counts[2].item()
    if n == 0:
        raise UserError("the evaluation split gave no images")
    return {"top1_error": 1 - counts[0].item() / n, "top5_error": 1 - counts[1].item() / n, "images": int(n)}


def evaluate_model(model, loader, device, world: int, precision: str) -> dict:
    """The trainer's evaluation of the model it holds, in the run's precision: centre-crop top-1/top-5 error over
    the val loader, summed over ranks."""
    return error_rates([model], loader, device, precision, world)


def check_eval_data(data, split: str, purpose: str = "", *, checkpoint=None, model=None, ts=None) -> dict:
    """The data dir is ready for evaluating a checkpoint and holds `split`; -> its manifest. The one check of
    evaluate and viz. Given the checkpoint's model and settings, the data must also fit it: the same number of
    classes, and images at least as large as its crop."""
    from alexnet_pipe.stats.ready import check_data
    manifest = check_data(data, need_val=False)
    if split not in manifest["splits"]:
        raise UserError(f"{data} has no {split} split{purpose}")
    check_fits(manifest, data, checkpoint, model, ts)
    return manifest


def check_fits(manifest: dict, data, checkpoint, model=None, ts=None) -> None:
    """A checkpoint's model and settings fit the data dir: the same number of classes, images at least as large
    as its crop."""
    if model is not None:
        trained, here = model.classifier.fc8.out_features, len(manifest["classes"])
        if trained != here:
            raise UserError(f"{checkpoint} was trained on {trained} classes but {data} holds {here}: "
                            "evaluate it on a data dir prepared from the classes it was trained on")
    if ts is not None and ts.crop > (size := int(manifest["settings"]["size"])):
        raise UserError(f"{checkpoint} was trained on {ts.crop} px crops but {data} holds {size} px images: "
                        f"evaluate it on a data dir prepared with `alexnet-pipe prepare --size {ts.crop}` or more")


def eval_loader(data, split: str, ts, device, *, batch_size: int, loader: str, num_threads: int,
                ten_crop: bool = False, with_params: bool = False):
    """The eval pipeline (centre crop or ten views, no augmentation) for a checkpoint trained with `ts`."""
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    return make_loader(LoaderSettings(
        data=Path(data), split=split, train=False, batch_size=batch_size, crop=ts.crop, loader=loader,
        device=device.type, normalize=ts.normalize,
        views="ten-crop" if ten_crop else "center", num_threads=num_threads, with_params=with_params))


def ensemble_precision(es: EvalSettings, loaded: list) -> str:
    """--precision, else the precision the checkpoints were trained in (one for the whole ensemble)."""
    if es.precision is not None:
        if es.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {es.precision!r}")
        return resolved(es.precision, es.device)
    own = {path: resolved(s.precision, s.device) for path, (_, s) in zip(es.checkpoints, loaded)}
    if len(set(own.values())) > 1:
        raise UserError("the checkpoints were trained in different precisions ("
                        + ", ".join(f"{p}: {v}" for p, v in own.items()) + "): pass --precision to evaluate them in one")
    return next(iter(own.values()))


def evaluate(es: EvalSettings) -> dict:
    """-> {"top1_error", "top5_error", "images", "views", "checkpoints", "split", "precision"}."""
    import torch
    device = torch.device(es.device)
    from alexnet_pipe.train.checkpoint import load_model
    loaded = [load_model(p, device) for p in es.checkpoints]
    models, first = [m for m, _ in loaded], loaded[0][1]
    for path, (_, s) in zip(es.checkpoints[1:], loaded[1:]):
        if (s.crop, s.normalize) != (first.crop, first.normalize):
            raise UserError(f"{path} was trained on crop {s.crop}/{s.normalize}, the first checkpoint on "
                            f"{first.crop}/{first.normalize}: an ensemble needs the same input")
    precision = ensemble_precision(es, loaded)
    manifest = check_eval_data(es.data, es.split)  # read and checked once for the whole ensemble
    for path, (model, s) in zip(es.checkpoints, loaded):  # each member must fit the data (classes, crop)
        check_fits(manifest, es.data, path, model, s)
    loader = eval_loader(es.data, es.split, first, device, batch_size=es.batch_size, loader=es.loader,
                         num_threads=es.num_threads, ten_crop=es.ten_crop)
    try:
        from alexnet_pipe.core.progress import Progress
        progress = Progress(loader.steps_per_epoch, f"evaluate {es.split}", unit="batch")  # on stderr
        rates = error_rates(models, loader, device, precision, progress=progress, names=es.checkpoints)
        progress.close()
    finally:
        loader.close()
    return {**rates, "views": 10 if es.ten_crop else 1, "checkpoints": list(es.checkpoints), "split": es.split,
            "precision": precision}
