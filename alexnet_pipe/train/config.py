"""The trainer's settings: one frozen dataclass, the single source of every train option, and its recipes.

Each field carries its own metadata (help text, choices, range): `alexnet-pipe train` generates its click
options from it (cli/train.py), `check()` validates settings that come from a file (`--config`, a checkpoint)
or from Python with the same rules, and `settings.json` in a run dir is `asdict(TrainSettings)`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field

from alexnet_pipe import loaders
from alexnet_pipe.loaders.augment import CROP_MODES, LIGHTING_SCALES, NORMALIZE, RRC_RATIO, RRC_SCALE
from alexnet_pipe.core.devices import DEVICES
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.limits import (FLOAT32_MAX, MAX_BATCH, MAX_PROCESSES, MAX_SEED, MAX_SIZE, MAX_STRENGTH,
                                      MAX_WIDTH)
from alexnet_pipe.model.choices import (ARCHS, CONV_IMPLS, INITS, LRN_CONVENTIONS, LRN_IMPLS,  # noqa: F401 (API)
                                        LRN_SPANS, MIN_CROP, lrn_convention)
from alexnet_pipe.train.precision import PRECISIONS, resolved as resolved_precision
from alexnet_pipe.train.schedule import SCHEDULES

# The model's choices live in the model wing (model/choices.py, no torch) so that the settings can name them.
MOMENTUM_FORMS = ("paper", "torch")
LOADERS = (*loaders.LOADERS, "synthetic")


@dataclass(frozen=True)
class Opt:
    """How a setting is offered and checked: help text, choices or a numeric range, CLI visibility."""
    help: str = ""
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    cli: bool = True        # False: set by the CLI from other options (device, nproc) or not an option at all
    hidden: bool = False


def setting(default, help: str = "", **opt):
    return field(default=default, metadata={"opt": Opt(help=help, **opt)})


@dataclass(frozen=True)
class TrainSettings:
    data: str = setting("alexnet-data", cli=False)
    run: str = setting("", cli=False)  # "" -> DATA/runs/<timestamp>
    recipe: str = setting("paper", cli=False)
    arch: str = setting("alexnet", "alexnet: the paper's grouped net; alexnet-owt: torchvision's one-weird-trick "
                                   "layout.", choices=ARCHS)
    width: float = setting(1.0, "Scale every channel count and fc width (quick CPU experiments).",
                           min=0, min_open=True, max=MAX_WIDTH)
    num_classes: int = setting(0, "0: from the data (synthetic loader: 10).", min=0, hidden=True)
    epochs: int = setting(90, "Epochs to train.", min=1)
    batch_size: int = setting(128, "GLOBAL batch, split evenly over the processes.", min=1, max=MAX_BATCH)
    lr: float = setting(0.01, "Base learning rate.", min=0, min_open=True)
    momentum: float = setting(0.9, "SGD momentum.", min=0, max=1)
    weight_decay: float = setting(5e-4, "L2 weight decay.", min=0)
    momentum_form: str = setting(MOMENTUM_FORMS[0], "paper: v <- m v - wd lr w - lr g, w <- w + v (the lr stays "
                                 "inside the velocity, as the paper prints it); torch: torch.optim.SGD.",
                                 choices=MOMENTUM_FORMS)
    bias_lr_mult: float = setting(2.0, "Biases' learning rate over the weights' (cuda-convnet2 and Caffe: 2).",
                                  min=0, min_open=True)
    bias_decay: bool = setting(False, "Weight decay on biases too (cuda-convnet2 and Caffe: weights only).")
    schedule: str = setting("plateau", "plateau: lr / 10 when val error stops improving, at most --max-drops "
                                       "times (the paper); step: at --step-epochs; cosine.", choices=SCHEDULES)
    patience: int = setting(2, "Evaluations without a new best before a plateau drop.", min=1)
    max_drops: int = setting(3, "Plateau drops at most (the paper: 3).", min=0)
    step_epochs: tuple[int, ...] = setting((30, 60, 80), "Epochs where the step schedule divides the lr by 10.",
                                           min=1)
    warmup_epochs: float = setting(0.0, "Linear lr warm-up, in epochs.", min=0)
    init: str = setting("paper", "paper: N(0, 0.01) weights; kaiming: He init.", choices=INITS)
    bias_init: float = setting(1.0, "Bias of conv2/4/5, fc6/7: paper 1, Caffe 0.1.")
    lrn_alpha: str = setting(LRN_CONVENTIONS[0], "LRN scale: alpha-over-n is what cuda-convnet2 (and so the "
                             "paper's numbers), Caffe and torch.nn.LocalResponseNorm compute; alpha-as-printed is the "
                             "paper's printed formula, 5x stronger.", choices=LRN_CONVENTIONS)
    lrn_span: str = setting(LRN_SPANS[0], "LRN window: half normalises each GPU's half of the maps on its own, as "
                            "the paper's two-GPU network; whole lets the window cross the halves (Caffe's "
                            "bvlc_alexnet, torchvision). alexnet only.", choices=LRN_SPANS)
    lrn_impl: str = setting(LRN_IMPLS[0], "LRN implementation: one fused op with an analytic backward, the "
                            "reference (several passes through autograd), or the fused maths through torch.compile.",
                            choices=LRN_IMPLS)
    conv: str = setting(CONV_IMPLS[0], "Grouped layers as one grouped convolution or one dense convolution per half "
                        "(same weights, same outputs).", choices=CONV_IMPLS)
    dropout: float = setting(0.5, "Dropout probability of the fully-connected layers.", min=0, max=1,
                             max_open=True)
    crop: int = setting(0, "Training crop; 0: 7/8 of the stored size, 224 from 256 as in the paper; 227: Caffe's "
                        "geometry (conv1 unpadded, 55x55 as at 224).", min=0,
                        max=MAX_SIZE)
    loader: str = setting("auto", "auto: DALI where it is installed, else the torch DataLoader; synthetic: fixed "
                                  "random tensors, no data dir (benchmarks, tests).",
                          choices=LOADERS)
    lighting: float = setting(0.1, "PCA lighting sigma; 0 turns it off.", min=0, max=MAX_STRENGTH)
    lighting_scale: str = setting("convnet2", "PCA noise scale: cuda-convnet2's sqrt(eigenvalue) on 0..255, or "
                                              "fb.resnet's eigenvalue on [0,1] (~2x weaker).", choices=LIGHTING_SCALES)
    normalize: str = setting("mean-image", "Subtract the mean image (the paper) or per-channel mean/std.",
                             choices=NORMALIZE)
    # the modern augmentations and loss (issue 14); the defaults are the paper's recipe
    crops: str = setting("translate", "translate: the paper's crops of the stored image; random-resized: "
                         "Inception-style windows (--crop-scale, --crop-ratio) resized to --crop (needs "
                         "--normalize channel).", choices=CROP_MODES)
    crop_scale: tuple[float, float] = setting(RRC_SCALE, "Random-resized crops: the window's area fraction of the "
                                              "stored image, low,high.", min=0, min_open=True)
    crop_ratio: tuple[float, float] = setting(RRC_RATIO, "Random-resized crops: the window's aspect ratio w/h, "
                                              "low,high (drawn log-uniform).", min=0, min_open=True)
    color_jitter: float = setting(0.0, "Colour jitter strength j: brightness, contrast and saturation factors in "
                                  "[1-j, 1+j], as torchvision's ColorJitter(j, j, j); 0 turns it off.", min=0,
                                  max=MAX_STRENGTH)
    hue: float = setting(0.0, "Hue jitter: rotate the hue by up to this fraction of the colour circle.", min=0,
                         max=0.5)
    label_smoothing: float = setting(0.0, "Label smoothing epsilon of the training loss (evaluation unchanged).",
                                     min=0, max=1, max_open=True)
    tensorboard: bool = setting(False, "Also write a TensorBoard log to RUN/tensorboard (rank 0; the scalars of "
                                "metrics.jsonl).")
    device: str = setting("cpu", choices=DEVICES, cli=False)
    nproc: int = setting(1, min=1, max=MAX_PROCESSES, cli=False)
    compile: bool = setting(False, "torch.compile the model.")
    precision: str = setting("auto", "Arithmetic of the training steps and of the evaluations during training: fp32, "
                             "or bf16 or fp16 autocast (fp16 with loss scaling); auto: bf16 on CUDA, fp32 on the CPU. "
                             "Recorded resolved; a resume keeps the run's own.", choices=PRECISIONS)
    max_steps: int = setting(0, "Stop after this many optimizer steps; 0: no limit.", min=0)
    seed: int = setting(0, "Seed of the initial weights, the epoch plans and dropout.", min=0, max=MAX_SEED)
    eval_every: int = setting(1, "Evaluate on val every N epochs; 0 never.", min=0)
    ckpt_every: int = setting(0, "Also checkpoint every N steps (always at each epoch end); 0: epoch ends only.",
                              min=0)
    keep: int = setting(3, "Newest checkpoints kept (+ best.pt).", min=1)
    log_every: int = setting(20, "Steps per metrics row.", min=1)
    max_restarts: int = setting(0, "Restarts of the whole group after a worker dies (resumes from the last "
                                   "checkpoint).", min=0)
    resume: str = setting("", cli=False)  # "" | "latest" | "auto" (latest if any, else start) | a checkpoint path
    num_threads: int = setting(2, "Loader threads per process (DALI threads, or torch DataLoader workers: 0 reads "
                                  "in the training process).", min=0, max=MAX_PROCESSES)
    synthetic_steps: int = setting(8, "Steps per epoch of the synthetic loader.", min=1, hidden=True)


# Explicit options override these. The dataclass defaults are the paper's recipe.
RECIPES: dict[str, dict] = {
    "paper": {},
    # Small data, CPU minutes: the paper's init sits at chance for epochs at this scale (Caffe moved the
    # biases to 0.1 for the same reason). He init on per-channel-normalised input keeps activations at unit
    # scale without the biases; a short linear warm-up then cosine decay; quarter width.
    "small": dict(width=0.25, epochs=30, batch_size=64, lr=0.01, schedule="cosine", warmup_epochs=2.0,
                  init="kaiming", bias_init=0.0, normalize="channel", patience=2, log_every=5,
                  momentum_form="torch", bias_lr_mult=1.0, bias_decay=True),
    # torchvision's reference AlexNet recipe (lr 1e-2, its defaults otherwise) with issue 14's augmentations:
    # random-resized crops, colour jitter 0.4, label smoothing 0.1, 5 warm-up epochs then cosine
    # (docs/reproducing.md). torch's SGD on every parameter alike, as torchvision trains.
    "modern": dict(arch="alexnet-owt", epochs=90, batch_size=256, lr=0.01, momentum=0.9, weight_decay=1e-4,
                   schedule="cosine", warmup_epochs=5.0, init="kaiming", bias_init=0.0, normalize="channel",
                   lighting=0.0, crops="random-resized", color_jitter=0.4, hue=0.0, label_smoothing=0.1,
                   momentum_form="torch", bias_lr_mult=1.0, bias_decay=True),
}


def opt_of(name: str) -> Opt:
    return TrainSettings.__dataclass_fields__[name].metadata["opt"]


def default_text(name: str) -> str:
    """The paper default and any recipe's own value, for help texts: '90 (small: 30)'."""
    def show(v):
        return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
    default = TrainSettings.__dataclass_fields__[name].default
    others = [f"{r}: {show(v[name])}" for r, v in RECIPES.items() if name in v and v[name] != default]
    return show(default) + (f" ({'; '.join(others)})" if others else "")


def check_value(name: str, value) -> str | None:
    """Why `value` is not allowed for setting `name`, or None when it is."""
    o = opt_of(name)
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if o.choices and v not in o.choices:
            return f"must be one of {', '.join(map(str, o.choices))}, not {v!r}"
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number, not {v}"
        if isinstance(v, float) and abs(v) > FLOAT32_MAX:  # every float setting ends up in float32 tensors
            return f"must lie within float32's range (+-{FLOAT32_MAX:.3g}), not {v:g}"
        if o.min is not None and (v < o.min or (o.min_open and v == o.min)):
            return f"must be {'>' if o.min_open else '>='} {o.min:g}, not {v}"
        if o.max is not None and (v > o.max or (o.max_open and v == o.max)):
            return f"must be {'<' if o.max_open else '<='} {o.max:g}, not {v}"
    return None


def check(s: TrainSettings) -> TrainSettings:
    """Every field against its own rules (the same the CLI's option types apply); -> s."""
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        expected = float if f.type == "float" else int if f.type == "int" else None
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is not None and not isinstance(value, expected) or isinstance(value, bool) != (f.type == "bool"):
            raise UserError(f"setting {f.name} must be {f.type}, not {value!r}")
        problem = check_value(f.name, value)
        if problem:
            raise UserError(f"--{f.name.replace('_', '-')} {problem}")
    _check_applied_rates(s)
    return s


def _check_applied_rates(s: TrainSettings) -> None:
    """The optimiser scales float32 tensors by lr x bias_lr_mult and lr x weight_decay: where such a product is
    beyond float32, torch cannot even apply it (a RuntimeError at the first step)."""
    mult = max(1.0, s.bias_lr_mult)
    for what, value in ((f"--lr {s.lr:g} x --bias-lr-mult {s.bias_lr_mult:g}", s.lr * mult),
                        (f"--lr {s.lr:g} x --weight-decay {s.weight_decay:g}", s.lr * s.weight_decay * mult)):
        if value > FLOAT32_MAX:
            raise UserError(f"{what} is {value:.3g}, beyond the largest float32 ({FLOAT32_MAX:.3g}) the weights are "
                            "updated in: lower --lr")


def settings_from_dict(values: dict) -> TrainSettings:
    """TrainSettings from a settings.json or a checkpoint's settings (JSON lists back to tuples)."""
    if not isinstance(values, dict):
        raise UserError("the saved settings are not a JSON object of train settings")
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    known = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    if isinstance(known.get("lrn_alpha"), str) and known["lrn_alpha"] not in LRN_CONVENTIONS:
        with contextlib.suppress(ValueError):  # an old name mapped; an unknown one is refused by check()
            known["lrn_alpha"] = lrn_convention(known["lrn_alpha"])
    # settings saved before these options existed trained with torch's SGD on every parameter alike
    old = {"momentum_form": "torch", "bias_lr_mult": 1.0, "bias_decay": True}
    if "precision" not in values:  # saved before the setting: bf16 autocast on CUDA, fp32 on the CPU
        known["precision"] = resolved_precision("auto", "cuda" if known.get("device") == "cuda" else "cpu")
    # and before lrn_span, the LRN window crossed the two halves
    older = {"lrn_span": "whole"} if "lrn_span" not in values else {}
    return TrainSettings(**{**(old if "momentum_form" not in values else {}), **older, **known})


def model_for(s: TrainSettings, num_classes: int):
    """The model these settings describe, freshly initialised: the one place that maps settings to build_model
    (the trainer, checkpoint.load_model and the dry-run's table build it here)."""
    from alexnet_pipe.model.alexnet import build_model
    return build_model(s.arch, num_classes, s.width, lrn_alpha=s.lrn_alpha, bias_init=s.bias_init,
                       dropout=s.dropout, init=s.init, lrn_impl=s.lrn_impl, conv=s.conv, lrn_span=s.lrn_span,
                       crop=s.crop)


def resolve_settings(recipe: str = "paper", **overrides) -> TrainSettings:
    """Recipe values, then every override that is not None (explicit options beat the recipe)."""
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return TrainSettings(recipe=recipe, **{**RECIPES[recipe], **given})
