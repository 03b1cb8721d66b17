"""evaluate: top-k maths and softmax averaging against numpy, and the command end to end on a tiny data dir."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from alexnet_pipe.train.evaluation import average_softmax, topk_correct
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images, write_pca_json

S = 72  # stored size; crop 64 (the smallest crop the network takes is 63)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_topk_against_numpy():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(200, 12)), rng.integers(0, 12, 200)
    ranks = (scores > scores[np.arange(200), labels][:, None]).sum(axis=1)  # 0 = label scored highest
    got = topk_correct(torch.from_numpy(scores), torch.from_numpy(labels), (1, 5))
    assert got == [int((ranks < 1).sum()), int((ranks < 5).sum())]
    assert topk_correct(torch.from_numpy(scores[:, :3]), torch.zeros(200, dtype=torch.long), (1, 5))[1] == 200


def test_ensemble_and_ten_crop_average_softmax():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).double() for _ in range(3)]
    x = torch.randn(5, 10, 3, 2, 2, dtype=torch.float64)  # 5 images x 10 views
    flat = x.reshape(50, 3, 2, 2)
    want = np.mean([np_softmax(m(flat).detach().numpy()) for m in models], axis=0).reshape(5, 10, 4).mean(axis=1)
    got = average_softmax(models, x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    single = average_softmax(models[:1], x[:, 0]).detach().numpy()
    np.testing.assert_allclose(single, np_softmax(models[0](x[:, 0]).detach().numpy()), rtol=1e-6)


def test_evaluate_help_and_bad_checkpoint(tmp_path):
    assert "--ten-crop" in CliRunner().invoke(cli, ["evaluate", "--help"]).output
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    result = CliRunner().invoke(cli, ["evaluate", str(junk), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "not a checkpoint written by" in result.output


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(tmp_path, data_dir):
    runner = CliRunner()
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"run{seed}"
        result = runner.invoke(cli, ["train", "--data", str(data_dir), "--run", str(run), "--cpu", "--loader",
                                     "torch", "--width", "0.0625", "--crop", "64", "--batch-size", "8",
                                     "--max-steps", "3", "--seed", str(seed), "--num-threads", "1"])
        assert result.exit_code == 0, result.output
        assert any("top1_error" in r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()))
        runs.append(run / "best.pt")
    one = runner.invoke(cli, ["evaluate", str(runs[0]), "--data", str(data_dir), "--loader", "torch", "--json"])
    assert one.exit_code == 0, one.output
    report = json.loads(one.output.strip().splitlines()[-1])
    assert report["images"] == 12 and report["views"] == 1 and 0 <= report["top1_error"] <= 1
    assert report["top5_error"] == 0.0  # 4 classes: the label is always among the top 5
    both = runner.invoke(cli, ["evaluate", *map(str, runs), "--data", str(data_dir), "--loader", "torch",
                               "--ten-crop", "--json"])
    assert both.exit_code == 0, both.output
    report = json.loads(both.output.strip().splitlines()[-1])
    assert report["views"] == 10 and report["images"] == 12 and len(report["checkpoints"]) == 2


def test_load_model_turns_any_unreadable_file_into_one_sentence(tmp_path):
    """torch.load raises UnpicklingError, EOFError, KeyError, RuntimeError... for junk: all one UserError."""
    from alexnet_pipe.core.errors import UserError
    from alexnet_pipe.train.checkpoint import load_model
    files = {"empty.pt": b"", "junk.pt": b"not a checkpoint at all", "zip.pt": b"PK\x03\x04 cut short"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=f"{name} is not a checkpoint written by `alexnet-pipe train`"):
            load_model(tmp_path / name)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(UserError, match="lacks model, settings or num_classes"):
        load_model(tmp_path / "tensor.pt")
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "empty.pt"), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "Aborted" not in result.output and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'empty.pt'} is not a checkpoint")


def test_weights_that_do_not_fit_their_settings_are_one_sentence(tmp_path):
    from dataclasses import asdict
    from alexnet_pipe.core.errors import UserError
    from alexnet_pipe.train.checkpoint import load_model
    from alexnet_pipe.model.alexnet import build_model
    from alexnet_pipe.train.config import TrainSettings
    state = {"model": build_model("alexnet", 3, 0.125).state_dict(), "num_classes": 3,
             "settings": asdict(TrainSettings(width=0.0625))}
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(UserError, match="its weights do not fit the model its settings describe"):
        load_model(tmp_path / "other.pt")


# --- issue 20: evaluate and the trainer's evaluation against an independent computation ----------------------

def _np_errors(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    ranks = (probs > probs[np.arange(len(labels)), labels][:, None]).sum(axis=1)
    return 1 - float(np.mean(ranks < 1)), 1 - float(np.mean(ranks < 5))


def _np_views(images: np.ndarray, mean: np.ndarray, crop: int, ten: bool) -> np.ndarray:
    """(N, V, 3, crop, crop) float32: the centre crop, or the four corners and the centre then their mirror
    images, of each image minus the mean image (the mean is cropped and mirrored with it)."""
    centred, far = images.astype(np.float32) - mean, images.shape[1] - crop
    corners = [(0, 0), (far, 0), (0, far), (far, far), (far // 2, far // 2)] if ten else [(far // 2, far // 2)]
    views = [centred[:, y:y + crop, x:x + crop] for x, y in corners]
    views += [v[:, :, ::-1] for v in views] if ten else []
    return np.ascontiguousarray(np.stack(views, axis=1).transpose(0, 1, 4, 2, 3))


@pytest.fixture(scope="module")
def ten_classes(tmp_path_factory):
    """Raw (lossless) shards of 30 val images in 10 classes, their pixels and the mean image."""
    root = tmp_path_factory.mktemp("ten") / "d"
    images, labels = random_images(40, S, seed=9), np.arange(40) % 10
    make_data_dir(root, {"train": (images[:10], labels[:10]), "val": (images[10:], labels[10:])}, 10, 2, "raw")
    (root / "stats").mkdir()
    mean = images[:10].astype(np.float32).mean(axis=0)
    np.save(root / "stats" / "mean.npy", mean)
    write_pca_json(root / "stats" / "pca.json", [3.0, 2.0, 1.0], np.eye(3), [120.0] * 3, [50.0] * 3, S, 10)
    return root, images[10:], labels[10:], mean


def _checkpoints(tmp_path, n: int, data=None):
    """n checkpoints of a tiny AlexNet, their models. A random net predicts nearly the same class for every
    image (its fc7 features share one large offset); given the data, fc8 reads each unit's spread over the val
    centre crops instead, so predictions differ from image to image, and from view to view."""
    from dataclasses import asdict
    from alexnet_pipe.train.config import TrainSettings, model_for
    s = TrainSettings(width=0.0625, crop=64, num_classes=10, init="kaiming", bias_init=0.0)
    paths, models = [], []
    for seed in range(n):
        torch.manual_seed(seed)
        model = model_for(s, 10).eval()
        if data is not None:
            _, images, _, mean = data
            with torch.no_grad():
                features = model.fc7(torch.from_numpy(_np_views(images, mean, 64, False)[:, 0]))
                fc8 = model.classifier.fc8
                fc8.weight.div_(features.std(0) + 1e-6)
                fc8.bias.copy_(-fc8.weight @ features.mean(0))
        paths.append(tmp_path / f"m{seed}.pt")
        torch.save({"model": model.state_dict(), "settings": asdict(s), "num_classes": 10}, paths[-1])
        models.append(model.eval())
    return paths, models


@pytest.mark.parametrize("members, ten", [(1, False), (1, True), (2, False), (2, True)])
def test_evaluate_is_the_top_k_of_the_softmax_averaged_over_views_and_models(tmp_path, ten_classes, members, ten):
    """Each of the four gives other errors here (0.9/0.43, 0.83/0.47, 0.9/0.57, 0.8/0.33)."""
    from alexnet_pipe.train.evaluation import EvalSettings, evaluate
    root, images, labels, mean = ten_classes
    paths, models = _checkpoints(tmp_path, members, ten_classes)
    got = evaluate(EvalSettings(tuple(map(str, paths)), data=str(root), loader="torch", num_threads=0,
                                ten_crop=ten, batch_size=7))
    views = _np_views(images, mean, 64, ten)
    with torch.no_grad():
        logits = [m(torch.from_numpy(views.reshape(-1, 3, 64, 64))).double().numpy() for m in models]
    probs = np.mean([np_softmax(x) for x in logits], axis=0).reshape(len(images), views.shape[1], 10).mean(axis=1)
    top1, top5 = _np_errors(probs, labels)
    assert 0.05 < top1 < 0.95 and top5 < top1  # the maths is not trivially 0 or 1 here
    assert got == {"top1_error": pytest.approx(top1), "top5_error": pytest.approx(top5), "images": 30,
                   "views": 10 if ten else 1, "checkpoints": list(map(str, paths)), "split": "val",
                   "precision": "fp32"}


def test_an_ensemble_of_other_inputs_or_an_empty_split_is_one_sentence(tmp_path, ten_classes):
    from dataclasses import asdict
    from alexnet_pipe.core.errors import UserError
    from alexnet_pipe.train.evaluation import EvalSettings, evaluate
    root = ten_classes[0]
    paths, _ = _checkpoints(tmp_path, 2)
    state = torch.load(paths[1], weights_only=True)
    state["settings"] = {**state["settings"], "normalize": "channel"}
    torch.save(state, paths[1])
    with pytest.raises(UserError, match=f"{paths[1]} was trained on crop 64/channel, the first checkpoint on "
                                        "64/mean-image: an ensemble needs the same input"):
        evaluate(EvalSettings(tuple(map(str, paths)), data=str(root), loader="torch", num_threads=0))
    assert asdict(EvalSettings(("x",))) == {"checkpoints": ("x",), "data": "alexnet-data", "split": "val",
                                           "ten_crop": False, "batch_size": 128, "loader": "auto", "device": "cpu",
                                           "num_threads": 2, "precision": None}


class _Batches:
    def __init__(self, batches):
        self.batches, self.epochs = batches, []

    def epoch(self, epoch: int):
        self.epochs.append(epoch)
        yield from self.batches


def test_the_trainers_evaluation_counts_top_k_over_the_loader_in_eval_mode():
    from alexnet_pipe.train.evaluation import evaluate_model
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(12, 9)).train()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(b, 3, 2, 2, generator=g), torch.randint(9, (b,), generator=g)) for b in (5, 7, 3)]
    loader = _Batches(batches)
    got = evaluate_model(model, loader, torch.device("cpu"), world=1, precision="fp32")
    assert model.training and loader.epochs == [0]
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in batches]).numpy()
    top1, top5 = _np_errors(logits, torch.cat([y for _, y in batches]).numpy())
    assert 0 < top1 < 1 and 0 < top5 < top1
    assert got == {"top1_error": pytest.approx(top1), "top5_error": pytest.approx(top5), "images": 15}


def test_eval_loader_asks_for_the_checkpoint_s_input_and_no_augmentation(monkeypatch):
    import alexnet_pipe.loaders as loaders
    from alexnet_pipe.loaders import LoaderSettings
    from alexnet_pipe.train.config import TrainSettings
    from alexnet_pipe.train.evaluation import eval_loader
    seen = []
    monkeypatch.setattr(loaders, "make_loader", lambda ls: seen.append(ls) or ls)
    ts = TrainSettings(crop=80, normalize="channel")
    for ten in (False, True):
        eval_loader("d", "val", ts, torch.device("cpu"), batch_size=6, loader="torch", num_threads=3, ten_crop=ten)
    eval_loader("d", "train", ts, torch.device("cpu"), batch_size=6, loader="torch", num_threads=3, with_params=True)
    want = LoaderSettings(data=Path("d"), split="val", train=False, batch_size=6, crop=80, loader="torch",
                          device="cpu", normalize="channel", views="center", num_threads=3, with_params=False)
    assert seen == [want, dataclasses.replace(want, views="ten-crop"),
                    dataclasses.replace(want, split="train", with_params=True)]


def test_members_that_do_not_fit_the_data_and_an_empty_split_are_one_sentence(tmp_path, ten_classes, monkeypatch):
    from dataclasses import asdict
    from alexnet_pipe.core.errors import UserError
    from alexnet_pipe.train import evaluation
    from alexnet_pipe.train.config import TrainSettings, model_for
    root = ten_classes[0]
    paths, _ = _checkpoints(tmp_path, 1)
    for name, s, classes, says in (  # each checked as the second member of an ensemble
            ("five.pt", TrainSettings(width=0.0625, crop=64), 5, "was trained on 5 classes but {root} holds 10"),
            ("big.pt", TrainSettings(width=0.0625, crop=80), 10, "was trained on 80 px crops but {root} holds 72 px")):
        torch.save({"model": model_for(s, classes).state_dict(), "settings": asdict(s), "num_classes": classes},
                   tmp_path / name)
        members = (str(tmp_path / name),) if s.crop != 64 else (str(paths[0]), str(tmp_path / name))
        with pytest.raises(UserError, match=f"{tmp_path / name} " + says.format(root=root)):
            evaluation.evaluate(evaluation.EvalSettings(members, data=str(root), loader="torch", num_threads=0))

    class Empty:
        steps_per_epoch = 0

        def epoch(self, epoch):
            return iter(())

        def close(self):
            pass
    monkeypatch.setattr(evaluation, "eval_loader", lambda *a, **k: Empty())
    with pytest.raises(UserError, match="the evaluation split gave no images"):
        evaluation.evaluate(evaluation.EvalSettings((str(paths[0]),), data=str(root), loader="torch"))
