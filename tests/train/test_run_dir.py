"""Issue 19, mechanism 3 (train): a run dir is the tool's when it holds the marker; a new run into a non-empty
dir refuses without --resume; the default run dir is made exclusively."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.train import rundir
from alexnet_pipe_cli.main import cli


def test_two_default_runs_in_the_same_second_get_two_dirs(tmp_path):
    name = tmp_path / "runs" / "20260101-000000"
    first, second = rundir.fresh_run_dir(name), rundir.fresh_run_dir(name)
    assert first == name and second != first and second.parent == first.parent
    assert rundir.is_ours(first) and rundir.is_ours(second)


def test_a_non_empty_dir_is_continued_only_with_resume(tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="did not write .*notes.txt"):
        rundir.claim_run_dir(users, continuing=False)
    ours = tmp_path / "run"
    rundir.claim_run_dir(ours, continuing=False)
    (ours / "settings.json").write_text("{}")
    with pytest.raises(UserError, match="holds a run already: continue it with --resume"):
        rundir.claim_run_dir(ours, continuing=False)
    rundir.claim_run_dir(ours, continuing=True)
    assert rundir.is_ours(ours)


def test_train_into_a_users_folder_is_one_sentence_and_leaves_it_alone(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "metrics.jsonl").write_text("my own file\n")
    result = CliRunner().invoke(cli, ["train", "--cpu", "--loader", "synthetic", "--run", str(run), "--max-steps",
                                      "1", "--width", "0.0625", "--batch-size", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "did not write" in result.output.strip().splitlines()[-1]
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]
    assert (run / "metrics.jsonl").read_text() == "my own file\n"
