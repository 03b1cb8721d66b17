"""`make mutation`: mutmut over the modules whose bugs change a training result silently, one group at a time,
each driven by its own tests (docs/testing.md has the groups' survivors and the decision for each).

    python tools/mutation.py                 # every group, one after the other
    python tools/mutation.py loop optim      # some groups
    python tools/mutation.py --list          # the groups, their modules and tests
    python tools/mutation.py --max-children 1 optim   # one test process at a time (default 2)
    python tools/mutation.py loop --only '*x_take_step__mutmut_7'   # one mutant again, after a new test

Not in CI: a group takes minutes to an hour on 2 cores. mutmut reads its settings from the pyproject.toml
of the directory it runs in and copies the sources it mutates there, so each group runs in .mutation/GROUP: links
to the sources, the tests and the docs, and a pyproject.toml made of the repository's [tool.mutmut] (the shared
settings) and [tool.pytest.ini_options], with the group's modules, tests and markers. Every run starts afresh (mutmut
would keep its first copy of the sources). Each group's survivors, with their diffs, are written to
.mutation/GROUP/survivors.txt, and how many mutants got each verdict (killed, survived, timeout, ...) to
.mutation/GROUP/counts.json.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# absolute, not resolved: a clone whose files are links to the repository (the docs test's) keeps its own .mutation
ROOT = Path(__file__).absolute().parents[1]
WORK = ROOT / ".mutation"
LINKED = ("alexnet_pipe", "tests", "docs")  # what the tests read besides the code (docs: the doc-driven tests)


@dataclass(frozen=True)
class Group:
    modules: tuple[str, ...]
    tests: tuple[str, ...]
    markers: str = "not slow and not gpu and not dali"
    # mutmut's mutant-name patterns (fnmatch): only these functions are mutated; () is every function
    functions: tuple[str, ...] = field(default=())
    # tests that only call the mutated code in processes they start: mutmut maps a mutant to the tests that
    # called its function in the test's own process, so these would cost time and never run for a mutant
    deselect: tuple[str, ...] = field(default=())
    # mutmut stops a mutant's tests after (their measured seconds + 1) x this, wall time (its default 15: an hour
    # for a mutant of the loop that never ends); a timeout counts as a kill, so a shorter one only helps when the
    # group has such mutants, and any timeout but theirs is to be looked at by hand (docs/testing.md)
    timeout_multiplier: float | None = None


GROUPS = {
    "optim": Group(("alexnet_pipe/train/optim.py", "alexnet_pipe/train/schedule.py"),
                   ("tests/train/test_optim.py", "tests/train/test_schedule.py")),
    "jitter": Group(("alexnet_pipe/loaders/jitter.py",), ("tests/loaders/test_jitter.py",)),
    # the loaders' plan maths: the epoch plan, each rank's slice of a step, the lighting, the windows and the
    # normaliser both backends finish with
    "plan": Group(("alexnet_pipe/loaders/base.py",),
                  ("tests/loaders/test_loader_plan.py", "tests/loaders/test_loaders.py",
                   "tests/loaders/test_loaders_fallback.py", "tests/loaders/test_loaders_modern.py",
                   "tests/loaders/test_finish_cpu.py",
                   "tests/train/test_resume.py::"
                   "test_every_global_step_reads_the_same_records_on_any_number_of_processes"),
                  functions=("*BaseLoader*plan*", "*BaseLoader*step_params*", "*BaseLoader*light*",
                             "*BaseLoader*window_params*", "*TorchNormalizer*")),
    "evaluate": Group(("alexnet_pipe/train/evaluation.py",),
                      ("tests/train/test_evaluate.py",
                       "tests/train/test_wiring.py::test_two_ranks_through_train_draw_their_own_masks_that_replay_on_resume",
                       "tests/train/test_finite.py::test_evaluate_refuses_a_model_whose_outputs_are_not_finite"),
                      markers="not gpu and not dali",
                      functions=("*topk_correct*", "*average_softmax*", "*error_rates*", "*evaluate_model*",
                                 "*x_evaluate__*", "*eval_loader*")),
    "augment": Group(("alexnet_pipe/loaders/augment.py",),
                     ("tests/loaders/test_augment.py", "tests/train/test_wiring.py")),
    # the loop's functions that shape a training result (not its checks and messages)
    "loop": Group(("alexnet_pipe/train/loop.py",),
                  ("tests/train/test_wiring.py",
                   # make_loaders and loader_settings, directly: seconds, where a training test takes minutes
                   "tests/train/test_loader_wiring.py",
                   "tests/train/test_train.py::test_resume_continues_at_the_exact_step",
                   "tests/train/test_train.py::test_checkpoints_are_plain_tensors_and_pruned",
                   "tests/train/test_train.py::test_small_recipe_learns_synthetic_classes",
                   "tests/train/test_train.py::test_lighting_scale_reaches_the_loader",
                   "tests/train/test_resume.py::test_a_non_finite_loss_stops_the_run_and_never_becomes_a_checkpoint",
                   "tests/train/test_resume.py::test_allowed_changes_pass_and_are_written_as_an_event_row",
                   # save's data fingerprint: only a resume on other data reads it
                   "tests/train/test_resume.py::test_a_resume_on_other_data_is_refused",
                   "tests/train/test_modern_recipe.py::test_make_loaders_passes_the_modern_settings",
                   "tests/train/test_modern_recipe.py::test_train_step_smooths_the_loss",
                   "tests/train/test_resume.py::test_dropout_seed_is_a_function_of_seed_rank_and_step",
                   # start's line that says where a resume continues
                   "tests/train/test_resume.py::test_a_resume_says_the_checkpoint_step_and_epoch_it_continues_from",
                   # preemption in this process (the slow test's runs are subprocesses): the check, the best mark
                   "tests/train/test_preemption.py::test_a_single_process_run_stops_at_the_step_the_notice_came_in",
                   "tests/train/test_preemption.py::test_a_preempted_run_s_checkpoint_is_not_marked_best",
                   # save's refusal of a model whose outputs overflow, at the run's last step
                   "tests/train/test_finite.py::"
                   "test_a_run_that_diverges_at_its_first_step_saves_nothing_and_the_advice_runs",
                   "tests/train/test_finite.py::test_a_run_that_ends_by_its_epochs_refuses_outputs_that_are_not_finite",
                   # restore's loss-scaler lines: only an fp16 resume reaches them
                   "tests/train/test_precision.py::test_fp16_resume_replays_the_loss_scale",
                   # start's "auto" resolved for the device the process got (a stand-in for CUDA)
                   "tests/train/test_precision.py::test_a_run_started_on_cuda_computes_and_records_bf16_for_auto"),
                  markers="not gpu and not dali", timeout_multiplier=4,
                  functions=("*x_train__*", "*x_restore__*", "*x_save__*", "*dropout_seed*", "*seed_dropout*",
                             "*x_take_step__*", "*train_step*", "*make_loaders*", "*loader_settings*",
                             "*x_build__*", "*make_opt*", "*x_start__*", "*x_begin_epoch__*")),
    "checkpoint": Group(("alexnet_pipe/train/checkpoint.py",),
                        ("tests/train/test_resume.py", "tests/train/test_wiring.py", "tests/train/test_evaluate.py",
                         "tests/train/test_train.py::test_resume_continues_at_the_exact_step",
                         "tests/train/test_train.py::test_checkpoints_are_plain_tensors_and_pruned",
                         "tests/train/test_train.py::test_cli_trains_and_resumes",
                         # write_checkpoint's refusal of weights that are not finite, and load_model's default
                         # device (viz filters leaves it out): nothing else in the list reaches them
                         "tests/train/test_finite.py::"
                         "test_weights_that_are_not_finite_are_never_written_and_the_advice_names_a_good_checkpoint",
                         "tests/train/test_finite.py::test_optimiser_state_that_is_not_finite_is_never_written",
                         "tests/report/test_viz.py::test_viz_filters_of_the_trained_checkpoint"),
                        markers="not gpu and not dali",
                        functions=("*rng_state*", "*_as_tuple*", "*gather_rng*", "*resume_path*",
                                   "*write_checkpoint*", "*load_model*", "*latest_checkpoint*", "*x_checkpoints__*"),
                        deselect=("tests/train/test_resume.py::test_two_processes_then_one_equal_two_throughout",)),
    # slowest last: every mutant of the model reruns LRN gradchecks and model builds (about an hour on 2 cores)
    "lrn": Group(("alexnet_pipe/model/lrn.py",), ("tests/model/test_lrn.py", "tests/model/test_model.py")),
    "alexnet": Group(("alexnet_pipe/model/alexnet.py",), ("tests/model/test_model.py", "tests/model/test_lrn.py")),
}


def group_config(group: Group) -> str:
    """The group's pyproject.toml: the repository's mutmut and pytest settings, then the group's own."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mutmut = {**project["tool"]["mutmut"], "only_mutate": list(group.modules),
              "pytest_add_cli_args_test_selection": list(group.tests)}
    mutmut["pytest_add_cli_args"] = [*mutmut.get("pytest_add_cli_args", []), "-m", group.markers,
                                     *(arg for test in group.deselect for arg in ("--deselect", test))]
    if group.timeout_multiplier is not None:
        mutmut["timeout_multiplier"] = group.timeout_multiplier
    pytest = project["tool"]["pytest"]["ini_options"]
    return _toml({"tool.mutmut": mutmut, "tool.pytest.ini_options": pytest})


def _toml(tables: dict) -> str:
    """The few value types these tables hold (strings, bools, numbers, lists of strings) as TOML."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return "[" + ", ".join(value(x) for x in v) + "]"
    return "\n".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items()) + "\n"
                     for name, table in tables.items())


def prepare(name: str, group: Group) -> Path:
    where = WORK / name
    where.mkdir(parents=True, exist_ok=True)
    for entry in LINKED:
        link = where / entry
        if not link.is_symlink():
            link.symlink_to(ROOT / entry)
    shutil.rmtree(where / "mutants", ignore_errors=True)  # mutmut never refreshes a copy it has made
    (where / "pyproject.toml").write_text(group_config(group))
    return where


def mutmut(where: Path, *args: str, capture: bool = False) -> str:
    command = [sys.executable, "-m", "mutmut", *args]  # the venv's own mutmut, whether or not its bin is on PATH
    done = subprocess.run(command, cwd=where, text=True, capture_output=capture, check=False)
    if done.returncode not in (0, 1) and not capture:
        raise SystemExit(f"mutmut {' '.join(args)} failed in {where} (exit {done.returncode})")
    return done.stdout if capture else ""


def outcomes(where: Path, group: Group) -> dict[str, str]:
    """mutant name -> mutmut's verdict (killed, survived, timeout, no tests, ...), for the group's functions."""
    found = {}
    for line in mutmut(where, "results", "--all", "true", capture=True).splitlines():
        name, sep, verdict = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            found[name] = verdict
    if group.functions:  # mutmut lists every mutant it made; keep those of the functions asked for
        found = {m: v for m, v in found.items() if any(fnmatch.fnmatch(m, p) for p in group.functions)}
    return found


def _when(where: Path) -> dict:
    """When the group's last run started, from its counts.json, or from when its mutants were made."""
    try:
        before = json.loads((where / "counts.json").read_text())
        return {k: before[k] for k in ("started", "max_children") if k in before}
    except (OSError, ValueError):
        made = (where / "mutants").stat().st_mtime
        return {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(made))}


def run(name: str, group: Group, children: int, only: str | None = None, report: bool = False) -> dict[str, int]:
    """Mutate and test one group (`only`: just its mutants of these name patterns); -> how many mutants got each
    verdict. Writes .mutation/GROUP/survivors.txt (each survivor's diff) and counts.json; `report`: of the run
    already in .mutation/GROUP, without running anything."""
    if only:
        group = dataclasses.replace(group, functions=tuple(only.split(",")))
    started = time.time()
    if report:  # a run stopped early: mutmut keeps each verdict as it comes; count what it has
        where = WORK / name
    else:
        where = prepare(name, group)
        mutmut(where, "run", "--max-children", str(children), *group.functions)
    verdicts = outcomes(where, group)
    if only and not verdicts:  # mutmut itself answers a filter that matches nothing with a traceback, exit 1
        raise SystemExit(f"--only '{only}' matched no mutant of the {name} group (mutmut's names: "
                         f"'*x_FUNCTION__mutmut_N', '*xǁCLASSǁMETHOD__mutmut_N'; see .mutation/{name}/mutants).")
    found = [m for m, v in verdicts.items() if v == "survived"]
    shows = [mutmut(where, "show", m, capture=True) for m in found]
    (where / "survivors.txt").write_text("".join(f"== {m}\n{text}\n" for m, text in zip(found, shows)))
    counts = dict(collections.Counter(verdicts.values()), mutants=len(verdicts))
    (where / "counts.json").write_text(json.dumps({
        **counts, "functions": list(group.functions),
        **(_when(where) if report else {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
                                        "minutes": round((time.time() - started) / 60, 1),
                                        "max_children": children})}, indent=1) + "\n")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=", ".join(GROUPS) + " (default: all)")
    parser.add_argument("--list", action="store_true", help="print the groups and exit")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: count the verdicts of the groups' last runs (one stopped early too)")
    parser.add_argument("--max-children", type=int, default=2, metavar="N",
                        help="test processes at a time (default 2: the machines are shared)")
    parser.add_argument("--only", metavar="PATTERN", default=os.environ.get("ALEXNET_PIPE_MUTATION_ONLY") or None,
                        help="only the mutants whose names match one of these comma-separated patterns "
                             "(fnmatch, as mutmut names them: '*dropout_seed__mutmut_3'), e.g. to see a new test "
                             "kill a survivor; default $ALEXNET_PIPE_MUTATION_ONLY")
    args = parser.parse_args()
    if unknown := [g for g in args.groups if g not in GROUPS]:
        parser.error(f"no group {', '.join(unknown)}; the groups are {', '.join(GROUPS)}")
    if stale := [p for g in GROUPS.values() for p in (*g.modules, *g.tests, *g.deselect)
                 if not (ROOT / p.split("::")[0]).is_file()]:  # the layout moved under a group
        raise SystemExit(f"the groups name files that are not there: {', '.join(stale)}")
    if args.max_children < 1:
        parser.error("--max-children must be at least 1")
    if args.list:
        for name, g in GROUPS.items():
            print(f"{name}: {', '.join(g.modules)}\n  tests: {' '.join(g.tests)} (-m '{g.markers}')"
                  + (f"\n  functions: {' '.join(g.functions)}" if g.functions else "")
                  + (f"\n  timeout: (the tests' seconds + 1) x {g.timeout_multiplier}" if g.timeout_multiplier else ""))
        return
    for name in args.groups or GROUPS:  # each group's line as soon as it is done: a group can take an hour
        counts = run(name, GROUPS[name], args.max_children, args.only, args.report)
        print(f"{name}: {counts.get('survived', 0)} surviving of {counts['mutants']} mutants "
              f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items()) if k != 'mutants')}); "
              f"diffs in {WORK / name / 'survivors.txt'}", flush=True)


if __name__ == "__main__":
    main()
