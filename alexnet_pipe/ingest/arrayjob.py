"""`prepare --only-shards auto`: this task's part of the shards, from the scheduler's array-job variables.

Slurm array jobs say the task and the task count (SLURM_ARRAY_TASK_ID, _MIN, _STEP, _COUNT); a Kubernetes
indexed Job says only the index (JOB_COMPLETION_INDEX), so its count comes from `--array-count`, the Job's
`completions`.  Task i of n takes shards [S*i//n, S*(i+1)//n) of every split: contiguous, disjoint, and
together all S of them, whatever n is (a task beyond the shard count gets none and says so).
"""
from __future__ import annotations

from collections.abc import Mapping

from alexnet_pipe.core.errors import UserError

SLURM_ID = "SLURM_ARRAY_TASK_ID"
K8S_INDEX = "JOB_COMPLETION_INDEX"


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name} is {value!r}, not a whole number") from None


def task_slot(env: Mapping[str, str], count_option: int | None) -> tuple[int, int]:
    """(this task's index from 0, the number of tasks) of the array job this process runs in."""
    if SLURM_ID in env:
        step = _int(env, "SLURM_ARRAY_TASK_STEP", 1) or 1
        index = (_int(env, SLURM_ID) - _int(env, "SLURM_ARRAY_TASK_MIN", 0)) // step
        count = _int(env, "SLURM_ARRAY_TASK_COUNT", count_option)
        source = f"${SLURM_ID}"
    elif K8S_INDEX in env:
        index, count, source = _int(env, K8S_INDEX), count_option, f"${K8S_INDEX}"
    else:
        raise UserError(f"--only-shards auto needs a Slurm array job (${SLURM_ID}) or a Kubernetes indexed Job "
                        f"(${K8S_INDEX} with --array-count N); neither is set here")
    if count is None:
        raise UserError(f"--only-shards auto under {source} needs the number of tasks: pass --array-count N "
                        "(the Job's completions)")
    if not 0 <= index < count:
        raise UserError(f"{source} gives task {index}, outside the {count} tasks of the array job")
    return index, count


def auto_range(env: Mapping[str, str], count_option: int | None, shards: int) -> tuple[int, int]:
    """[A, B) of this task; may be empty where there are more tasks than shards."""
    index, count = task_slot(env, count_option)
    return shards * index // count, shards * (index + 1) // count


def task_note(env: Mapping[str, str], count_option: int | None, taken: tuple[int, int]) -> str:
    """The line an array task prints first: which task it is, where that came from, and the shards it takes."""
    index, count = task_slot(env, count_option)
    source = SLURM_ID if SLURM_ID in env else K8S_INDEX
    a, b = taken
    share = f"shards {a}:{b} of each split" if b > a else "no shard (more tasks than shards)"
    return f"--only-shards auto: array task {index + 1} of {count} (${source}={env[source]}) writes {share}"
