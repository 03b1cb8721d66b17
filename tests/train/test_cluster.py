"""Clusters: the several-node commands of docs/getting-started.md (torchrun, Slurm, Kubernetes), run as written.

The blocks are read from the doc itself (the code block after `<!-- test: NAME -->`), so doc and reality cannot
drift apart. One machine stands in for the cluster: two torchrun launchers ("nodes") with a c10d rendezvous on
loopback, gloo, 3 steps of a tiny AlexNet on the synthetic loader; they must reach the weights of the same run made
by one `train --cpu --nproc 2` (the elastic launcher, one node). Only the values a site changes are replaced: the
shared path, the rendezvous host and port, 8 GPUs per node -> 1 CPU process; the tiny model's options are appended.
Slurm's `srun`/`scontrol` and the Job's environment are stand-ins set up here, as a 2-node allocation on localhost.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from alexnet_pipe.train.checkpoint import latest_checkpoint, load_checkpoint
from alexnet_pipe.train.runlog import read_metrics
from alexnet_pipe_cli.main import cli
from helpers.docblocks import named_block

ROOT = Path(__file__).resolve().parents[2]
SHARED = "/shared/alexnet-data"  # the docs' shared file system, a tmp dir here
TINY = ["--cpu", "--loader", "synthetic", "--arch", "alexnet", "--width", "0.0625", "--crop", "64",
        "--batch-size", "8", "--num-classes", "5", "--eval-every", "0", "--log-every", "1", "--schedule", "step",
        "--synthetic-steps", "4", "--dropout", "0", "--max-steps", "3"]
# The doc's commands get no --cpu: they choose the device as written. Only where CUDA is present do the two local
# "nodes", which would share one GPU, train on the CPU instead.
def _doc_tiny() -> list[str]:
    import torch
    return TINY if torch.cuda.is_available() else TINY[1:]


LAUNCH_TIMEOUT = 300  # seconds for a whole 2-node run; a hang fails the test instead of CI


# ---------------------------------------------------------------- torchrun's parser and train's options

def torchrun_parse(argv: list[str]):
    """torchrun's own argument parser on argv (no process started); SystemExit with its message on an error."""
    import contextlib
    import io
    from torch.distributed.run import get_args_parser
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return get_args_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"torchrun {shlex.join(argv)}: {err.getvalue().strip().splitlines()[-1]}") from None


def train_option_names() -> dict[str, str]:
    """Every spelling of every `train` option -> the option's name."""
    from alexnet_pipe_cli.train import train
    return {o: p.name for p in train.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def test_train_options_pass_through_torchrun():
    """After `-m alexnet_pipe train`, torchrun's parser still takes any prefix of its own options (--run of
    --run-path, --nproc of --nproc-per-node) as ambiguous and stops. Every option must have a spelling that passes;
    only --nproc (meaningless under torchrun: it starts the processes) may lack one."""
    spellings = train_option_names()
    refused = set()
    for opt in spellings:
        try:
            args = torchrun_parse(["--nnodes", "1", "-m", "alexnet_pipe", "train", opt, "x"])
            assert args.training_script_args == ["train", opt, "x"]
        except AssertionError:
            refused.add(opt)
    assert refused == {"--run", "--nproc"}, refused  # a new option that collides: give it another spelling
    names = {spellings[o] for o in refused}
    passing = {spellings[o] for o in spellings.keys() - refused}
    assert names - passing == {"nproc"}


def torchrun_commands(text: str) -> list[str]:
    """Every `torchrun ...` command in a markdown text, continuation lines joined."""
    text = text.replace("\\\n", " ")
    # a trailing `&` (the Slurm script's step runs in the background) is the shell's, not an argument
    return [m.group(1) for m in re.finditer(r"^\s*(?:srun\s+)?(torchrun\s.*?)(?:\s+&)?$", text, re.M)]


@pytest.mark.parametrize("doc", ["getting-started.md", "training.md"])
def test_documented_torchrun_commands_parse(doc):
    """torchrun's parser and train's accept every documented torchrun command (what failed as written)."""
    from alexnet_pipe_cli.train import train
    commands = torchrun_commands((ROOT / "docs" / doc).read_text())
    assert commands, f"no torchrun command in docs/{doc}"
    for command in commands:
        words = shlex.split(command.split("#")[0])
        args = torchrun_parse(words[1:])
        assert args.module and args.training_script == "alexnet_pipe", command
        assert args.training_script_args[0] == "train", command
        train.make_context("train", args.training_script_args[1:])  # click: every option known


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env)


def test_run_dir_is_the_run_option(tmp_path):
    result = invoke("train", "--cpu", "--loader", "synthetic", "--run-dir", str(tmp_path / "r"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert re.search(r"^  run +\"" + re.escape(str(tmp_path / "r")) + '"$', result.output, re.M)


def test_under_torchrun_without_a_run_dir_is_one_sentence(tmp_path):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}  # what torchrun sets in its workers
    result = invoke("train", "--cpu", "--loader", "synthetic", "--data", str(tmp_path), env=env)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--run-dir DIR" in result.output and not (tmp_path / "runs").exists()


def test_under_torchrun_the_device_is_chosen_as_a_plain_run_chooses_it(tmp_path):
    """The docs' torchrun, Slurm and Kubernetes commands have no --cpu: on a machine without a GPU they train on the
    CPU, as a plain `train` does (they crashed in torch.cuda.set_device)."""
    import torch
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # torchrun's one worker
    run = tmp_path / "r"
    result = invoke("train", *TINY[1:], "--run-dir", str(run), env=env)
    assert result.exit_code == 0, result.output
    device = json.loads((run / "settings.json").read_text())["device"]
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- the doc's commands, run on one machine

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def site(text: str, data: Path, port: int) -> str:
    """The site-specific values of a doc block replaced by this machine's."""
    assert SHARED in text and ":29400" in text and re.search(r"--nproc-per-node[ =]\S+", text), text
    text = text.replace(SHARED, str(data)).replace(":29400", f":{port}")
    return re.sub(r"--nproc-per-node([ =])\S+", r"--nproc-per-node\g<1>1", text)


def tools(tmp_path: Path, **scripts: str) -> Path:
    """A bin dir with `torchrun` (what the torch wheel installs: `python -m torch.distributed.run`) and stand-ins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scripts = {"torchrun": f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m torch.distributed.run "$@"\n',
               **scripts}
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def environment(bin_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "PET_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "JOB_COMPLETION_INDEX"):
        env.pop(k, None)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1",
               **extra)
    return env


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (torchrun then stops its workers, which run in sessions of their own), SIGKILL
    to what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def run_all(commands: list[tuple[list[str], dict]], logs: Path, timeout: float = LAUNCH_TIMEOUT) -> None:
    """Start every (argv, env) at once, each in its own session; all must exit 0 within the timeout. When one
    fails the others are stopped at once (a node left alone would wait for its peers until the timeout)."""
    logs.mkdir(exist_ok=True)
    procs = []
    for i, (argv, env) in enumerate(commands):
        with open(logs / f"{i}.log", "wb") as out:
            procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            stop(proc)
    report = "\n".join(f"--- {shlex.join(argv)[:200]}: exit {p.returncode}\n{(logs / f'{i}.log').read_text()[-3000:]}"
                       for i, ((argv, _), p) in enumerate(zip(commands, procs)))
    assert all(p.returncode == 0 for p in procs), report


def tiny_state(run: Path) -> tuple[dict, list, dict]:
    settings = json.loads((run / "settings.json").read_text())
    settings.pop("run")
    return load_checkpoint(latest_checkpoint(run))["model"], [r["step"] for r in read_metrics(run)], settings


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    """The same training on one node: `train --cpu --nproc 2` (torch's elastic launcher, 2 gloo processes)."""
    data = tmp_path_factory.mktemp("one-node")
    run = data / "runs" / "r1"
    bin_dir = tools(data)
    run_all([([sys.executable, "-m", "alexnet_pipe", "train", "--data", str(data), "--run-dir", str(run),
               *TINY[:1], "--nproc", "2", *TINY[1:]], environment(bin_dir))], data / "logs")
    return tiny_state(run)


def assert_reaches(run: Path, one_node) -> None:
    from helpers.training import assert_same_weights
    weights, steps, settings = tiny_state(run)
    ref_weights, ref_steps, ref_settings = one_node
    assert steps == ref_steps == [1, 2, 3]
    assert {k: v for k, v in settings.items() if k != "data"} == {k: v for k, v in ref_settings.items()
                                                                    if k != "data"}
    assert_same_weights(weights, ref_weights, atol=1e-5)


@pytest.mark.slow
def test_two_torchrun_nodes_reach_the_one_node_weights(tmp_path, one_node):
    """getting-started.md's torchrun command, once per "node", with a c10d rendezvous on 127.0.0.1."""
    port, data = free_port(), tmp_path / "shared"
    command = site(named_block("torchrun"), data, port).replace("HOST0", "127.0.0.1").strip()
    assert command.startswith("torchrun ") and "--nnodes 2" in command
    node = ["bash", "-c", f"{command} {shlex.join(_doc_tiny())}"]
    env = environment(tools(tmp_path))
    run_all([(node, env), (node, env)], tmp_path / "logs")
    assert_reaches(data / "runs" / "r1", one_node)


SRUN = """#!/usr/bin/env python3
# Slurm's srun, as far as a batch script sees it on a fake allocation: one task per node
# (--ntasks-per-node=1), each with its SLURM_PROCID/NODEID; a signal srun gets is passed on to every task, as
# srun does; srun ends when all tasks have, failing if any did.
import os, signal, subprocess, sys
nodes = int(os.environ["SLURM_NNODES"])
tasks = [subprocess.Popen(sys.argv[1:], env=dict(os.environ, SLURM_PROCID=str(i), SLURM_NODEID=str(i),
                                                  SLURM_LOCALID="0", SLURM_STEP_ID="0"))
         for i in range(nodes)]
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, _: [t.send_signal(signum) for t in tasks])
sys.exit(max(abs(t.wait()) for t in tasks))
"""
SCONTROL = """#!/usr/bin/env python3
# `scontrol show hostnames LIST`: one host a line (comma lists only, no brackets: enough for the fake allocation);
# `scontrol requeue ID`: noted in $FAKE_SLURM_LOG.
import os, sys
if sys.argv[1:2] == ["requeue"]:
    with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
        log.write(" ".join(sys.argv[1:]) + "\\n")
    sys.exit(0)
assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
print("\\n".join(sys.argv[3].split(",")))
"""


def slurm_job(tmp_path: Path, data: Path, extra: list[str]) -> tuple[list[str], dict]:
    """getting-started.md's sbatch script with this machine's values and `extra` train options, and the environment
    of a 2-node allocation on localhost (job 4242)."""
    script = site(named_block("slurm"), data, free_port())
    nodes = int(re.search(r"^#SBATCH --nodes[= ](\d+)", script, re.M).group(1))
    assert nodes == 2 and re.search(r"^#SBATCH --ntasks-per-node[= ]1$", script, re.M)
    assert "srun torchrun" in script and "$SLURM_JOB_NODELIST" in script and "$SLURM_JOB_ID" in script
    step = re.compile(r"--resume auto(?= &$|$)", re.M)  # the end of the training step's command
    assert len(step.findall(script)) == 1
    (tmp_path / "job.sh").write_text(step.sub(f"--resume auto {shlex.join(extra)}", script))
    env = environment(tools(tmp_path, srun=SRUN, scontrol=SCONTROL), SLURM_JOB_ID="4242",
                      SLURM_JOB_NUM_NODES=str(nodes), SLURM_NNODES=str(nodes),
                      SLURM_JOB_NODELIST=",".join(["localhost"] * nodes), FAKE_SLURM_LOG=str(tmp_path / "slurm.log"))
    return ["bash", str(tmp_path / "job.sh")], env


@pytest.mark.slow
def test_slurm_script_on_a_fake_two_node_allocation(tmp_path, one_node):
    """getting-started.md's sbatch script, run by bash with SLURM_* of a 2-node allocation on localhost."""
    data = tmp_path / "shared"
    run_all([slurm_job(tmp_path, data, _doc_tiny())], tmp_path / "logs")
    runs = list((data / "runs").iterdir())
    assert [r.name for r in runs] == ["4242"]  # the run dir is named after the job
    assert_reaches(runs[0], one_node)


@pytest.mark.slow
def test_kubernetes_indexed_job_container_command(tmp_path, one_node):
    """getting-started.md's Service + indexed Job: consistent with each other, and the container command, run
    once per completion index with the Job's environment, trains as the one-node run does."""
    import yaml  # PyYAML, a test dependency
    port, data = free_port(), tmp_path / "shared"
    docs = {d["kind"]: d for d in yaml.safe_load_all(named_block("kubernetes"))}
    service, job = docs["Service"], docs["Job"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    argv = container["command"] + container.get("args", [])
    nnodes = int(argv[argv.index("--nnodes") + 1])
    host, _, doc_port = argv[argv.index("--rdzv-endpoint") + 1].partition(":")
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == nnodes == 2
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"  # index 0's DNS name
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    assert int(doc_port) == service["spec"]["ports"][0]["port"] == 29400
    argv = shlex.split(site(shlex.join(argv), data, port).replace(host, "127.0.0.1")) + _doc_tiny()
    assert argv[0] == "torchrun"
    bin_dir = tools(tmp_path)
    base = {e["name"]: str(e["value"]) for e in container.get("env", [])}
    run_all([(argv, environment(bin_dir, **base, JOB_COMPLETION_INDEX=str(i), HOSTNAME=f"{job['metadata']['name']}-{i}"))
             for i in range(nnodes)], tmp_path / "logs")
    assert_reaches(data / "runs" / "r1", one_node)


def _rows(run: Path) -> int:
    try:
        return sum('"loss"' in line for line in (run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def end_group(pgid: int, grace: float = 40) -> None:
    """Stop what is left of a process group whose leader may be gone: SIGTERM (torchrun then stops its workers,
    which run in sessions of their own), SIGKILL after the grace period."""
    deadline = time.monotonic() + grace
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)


@pytest.mark.slow
def test_slurm_preemption_checkpoints_exits_75_and_the_requeued_job_continues(tmp_path):
    """`--signal=B:TERM` signals the batch shell alone: the script hands the notice to the job step, whose ranks
    checkpoint one step and stop; the job exits 75 and asks to be requeued; run again (the requeued job, same id),
    it continues from that checkpoint (the shell exited 143 while training went on)."""
    data = tmp_path / "shared"
    run = data / "runs" / "4242"
    tiny = _doc_tiny()
    assert tiny[-2:] == ["--max-steps", "3"]
    tiny = tiny[:-2]  # the length comes from the environment: long here, short for the requeued job
    argv, env = slurm_job(tmp_path, data, tiny)
    with open(tmp_path / "job.log", "wb") as log:
        proc = subprocess.Popen(argv, env=dict(env, ALEXNET_PIPE_TRAIN_MAX_STEPS="1000"), cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while _rows(run) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # to the batch shell only, as --signal=B: does
        code = proc.wait(timeout=120)
    finally:
        end_group(proc.pid)
    assert code == 75, (tmp_path / "job.log").read_text()[-3000:]
    assert (tmp_path / "slurm.log").read_text() == "requeue 4242\n"
    step = int(latest_checkpoint(run).stem.split("-")[1])
    assert step == max(r["step"] for r in read_metrics(run) if "loss" in r)  # the step the ranks stopped at
    run_all([(argv, dict(env, ALEXNET_PIPE_TRAIN_MAX_STEPS=str(step + 2)))], tmp_path / "requeued")
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, step + 3))
