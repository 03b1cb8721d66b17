"""What a data dir is bound to (prepare.json: the output settings and the plan), and which shards are left to
write in it: a data dir holding shards made otherwise is refused, never silently mixed."""
from __future__ import annotations

import os
from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.ingest import claims
from alexnet_pipe.ingest import owned
from alexnet_pipe.ingest.plan import PrepareSettings, ShardPlan
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.shards.manifest import read_shard_meta


def shard_claim(dd: DataDir, p: ShardPlan) -> Path:
    return claims.claim_path(dd.split(p.split), p.name)


def _differences(old: dict, new: dict) -> str:
    diffs = [f"{k} {old['settings'].get(k)} -> {v}" for k, v in new["settings"].items()
             if old["settings"].get(k) != v]
    if not diffs and old.get("plan") != new["plan"]:
        diffs.append("the input files changed")
    return ", ".join(diffs)


def claim_data_dir(dd: DataDir, record: dict, overwrite: bool, only: tuple[int, int] | None = None) -> None:
    """Bind the data dir to these settings, or refuse where it holds shards made otherwise.
    --overwrite removes only what prepare and stats wrote (owned.py); the hints never suggest more."""
    owned.refuse_foreign(dd)
    old, damage = owned.read_prepare_record(dd)
    if overwrite:
        owned.clear(dd, only)
    elif damage:
        raise UserError(f"{dd.root / owned.PREPARE_JSON} is unreadable ({damage}); pass --overwrite to replace what prepare wrote in "
                        f"{dd.root} (files it did not write stay)")
    elif old is not None and (diff := _differences(old, record)):
        raise UserError(f"{dd.root} holds shards made differently ({diff}); pass --overwrite to replace them "
                        "(files prepare did not write stay), or choose another --data dir")
    elif old is None and owned.has_shards(dd):
        raise UserError(f"{dd.root} holds shards but no {owned.PREPARE_JSON} saying how they were made; pass "
                        "--overwrite to replace them (files prepare did not write stay)")
    owned.write_prepare_record(dd, record)


def pending_shards(dd: DataDir, plan: dict[str, list[ShardPlan]],
                   only: tuple[int, int] | None) -> list[ShardPlan]:
    """Shards of this run not yet committed (leftovers are removed once a shard is claimed, see _take)."""
    todo = []
    for split, plans in plan.items():
        folder = dd.split(split)
        folder.mkdir(exist_ok=True)
        for p in plans:
            if only and not only[0] <= p.index < only[1]:
                continue
            meta = read_shard_meta(folder / p.name)
            if meta is None:
                todo.append(p)
                continue
            claims.clear_stale(shard_claim(dd, p))
            if meta.get("fingerprint") != p.fingerprint:
                raise UserError(f"{folder / p.name} was written from other inputs; pass --overwrite to replace "
                                "the shards (files prepare did not write stay)")
    return todo


def resolve_only_shards(settings: PrepareSettings, plan: dict[str, list[ShardPlan]]) -> tuple[int, int] | None:
    """This run's [A, B) of every split, or None for all; a range that selects nothing is refused."""
    most = max((len(p) for p in plan.values()), default=0)
    if settings.only_shards == "auto":
        from alexnet_pipe.ingest.arrayjob import auto_range
        return auto_range(os.environ, settings.array_count, most)
    if settings.only_shards is not None and settings.only_shards[0] >= most:
        a, b = settings.only_shards
        raise UserError(f"--only-shards {a}:{b} selects no shard: the plan has at most {most} shards per split "
                        f"(0:{most} is all of them)")
    return settings.only_shards
