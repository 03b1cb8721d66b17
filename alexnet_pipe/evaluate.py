"""Top-1/top-5 error of one checkpoint or an ensemble (softmax outputs averaged, the paper's 5- and 7-CNN rows),
with the centre crop or the paper's ten views (four corners + centre, and their reflections)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from alexnet_pipe.errors import UserError


@dataclass(frozen=True)
class EvalSettings:
    checkpoints: tuple[str, ...]
    data: str = "alexnet-data"
    split: str = "val"
    ten_crop: bool = False
    batch_size: int = 128
    loader: str = "dali"
    device: str = "cpu"
    num_threads: int = 2


def topk_correct(scores, labels, ks=(1, 5)) -> list[int]:
    """How many rows have their label among the k highest scores, for each k (k capped at the class count)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


def average_softmax(models, images):
    """Mean softmax over models and, for (B, V, 3, H, W) input, over the V views: (B, classes)."""
    import torch
    views = images.shape[1] if images.dim() == 5 else 1
    flat = images.flatten(0, 1) if images.dim() == 5 else images
    probs = torch.stack([torch.softmax(m(flat).float(), dim=1) for m in models]).mean(0)
    return probs.view(images.shape[0], views, -1).mean(1)


def load_model(path: Path | str, device="cpu"):
    """A checkpoint written by train -> (model in eval mode, its training settings); the one loader of
    evaluate and viz. A file that is not such a checkpoint raises UserError."""
    from alexnet_pipe.model import build_model
    from alexnet_pipe.train import load_checkpoint, settings_from_dict
    state = load_checkpoint(path)
    try:
        s = settings_from_dict(state["settings"])
        model = build_model(s.arch, state["num_classes"], s.width, lrn_alpha=s.lrn_alpha, dropout=s.dropout)
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as exc:  # settings or weights that do not fit together
        raise UserError(f"{path}: its weights do not fit the model its settings describe "
                        f"({str(exc).strip().splitlines()[0]})") from None
    return model.to(device).eval(), s


def check_eval_data(ts, data, split: str, purpose: str = "") -> dict:
    """The data dir is ready for a checkpoint trained with settings `ts` and holds `split`; -> its manifest.
    The one check of evaluate and viz."""
    from alexnet_pipe.train import check_data
    manifest = check_data(dataclasses.replace(ts, data=str(data), eval_every=0))
    if split not in manifest["splits"]:
        raise UserError(f"{data} has no {split} split{purpose}")
    return manifest


def eval_loader(data, split: str, ts, device, *, batch_size: int, loader: str, num_threads: int,
                ten_crop: bool = False, with_params: bool = False):
    """The eval pipeline (centre crop or ten views, no augmentation) for a checkpoint trained with `ts`."""
    from alexnet_pipe.pipeline import LoaderSettings, make_loader
    return make_loader(LoaderSettings(
        data=Path(data), split=split, train=False, batch_size=batch_size, crop=ts.crop, loader=loader,
        device="gpu" if device.type == "cuda" else "cpu", normalize=ts.normalize,
        views="ten-crop" if ten_crop else "center", num_threads=num_threads, with_params=with_params))


def evaluate(es: EvalSettings) -> dict:
    """-> {"top1_error", "top5_error", "images", "views", "checkpoints", "split"}."""
    import torch
    device = torch.device(es.device)
    loaded = [load_model(p, device) for p in es.checkpoints]
    models, first = [m for m, _ in loaded], loaded[0][1]
    for path, (_, s) in zip(es.checkpoints[1:], loaded[1:]):
        if (s.crop, s.normalize) != (first.crop, first.normalize):
            raise UserError(f"{path} was trained on crop {s.crop}/{s.normalize}, the first checkpoint on "
                            f"{first.crop}/{first.normalize}: an ensemble needs the same input")
    check_eval_data(first, es.data, es.split)
    loader = eval_loader(es.data, es.split, first, device, batch_size=es.batch_size, loader=es.loader,
                         num_threads=es.num_threads, ten_crop=es.ten_crop)
    correct1 = correct5 = images = 0
    with torch.no_grad():
        for batch, labels in loader.epoch(0):
            c1, c5 = topk_correct(average_softmax(models, batch), labels.to(device))
            correct1, correct5, images = correct1 + c1, correct5 + c5, images + len(labels)
    loader.close()
    if images == 0:
        raise UserError(f"the {es.split} split of {es.data} gave no images")
    return {"top1_error": 1 - correct1 / images, "top5_error": 1 - correct5 / images, "images": images,
            "views": 10 if es.ten_crop else 1, "checkpoints": list(es.checkpoints), "split": es.split}
