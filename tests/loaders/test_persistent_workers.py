"""The torch loader's workers persist across epochs on the CPU (issue 22): the same processes serve every epoch,
each epoch's batches are those a fresh loader gives, and an epoch left early has its batches in flight drained
before the buffers they write into are lent again."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import lmdb
import pytest
import torch

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.loaders import LoaderSettings, make_loader
from alexnet_pipe.loaders.slots import SharedBatches
from alexnet_pipe.shards import DamagedRecord
from helpers.loaders import CROP, build_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("persist") / "jpeg", "jpeg")


def _loader(data, workers=2, **kw):
    return make_loader(LoaderSettings(Path(data), **{"batch_size": 4, "crop": CROP, "loader": "torch",
                                                     "num_threads": workers, "seed": 5, **kw}))


def _copies(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


def _assert_same(got, want):
    assert len(got) == len(want)
    for (x, y), (wx, wy) in zip(got, want):
        assert torch.equal(x, wx) and torch.equal(y, wy)


def _workers() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


def test_the_same_workers_serve_every_epoch(data):
    loader = _loader(data)
    before = _workers()
    first = loader.epoch(0)
    next(first)
    ours = _workers() - before
    assert len(ours) == 2
    first.close()
    for epoch in (1, 2):
        batches = loader.epoch(epoch)
        next(batches)
        assert _workers() - before == ours  # no worker started again
        batches.close()
    loader.close()
    assert not ours & _workers()  # close() joined them


@pytest.mark.parametrize("leave_after", [1, 3])
def test_epochs_after_one_left_early_equal_a_fresh_loaders(data, leave_after, monkeypatch):
    """Epoch 0 left after a few batches (tasks still in flight), then epoch 1 whole and epoch 0 resumed at step 2:
    each equals what a fresh loader gives; no buffer is lent again before its batch came back."""
    out: set[int] = set()
    lend, take_back = SharedBatches.lend, SharedBatches.take_back

    def spy_lend(self):
        slot = lend(self)
        assert slot is None or slot not in out, f"buffer {slot} lent again while a task still writes into it"
        out.add(slot)
        return slot

    def spy_take_back(self, slot):
        out.discard(slot)
        return take_back(self, slot)

    monkeypatch.setattr(SharedBatches, "lend", spy_lend)
    monkeypatch.setattr(SharedBatches, "take_back", spy_take_back)
    loader = _loader(data)
    left = loader.epoch(0)
    for _ in range(leave_after):
        next(left)
    left.close()
    assert out  # the left epoch had tasks in flight: what this test is about
    got = [_copies(loader.epoch(1)), _copies(loader.epoch(0, start_step=2))]
    loader.close()
    monkeypatch.undo()
    for epoch, start, batches in ((1, 0, got[0]), (0, 2, got[1])):
        _assert_same(batches, _copies(_loader(data).epoch(epoch, start_step=start)))
        _assert_same(batches, _copies(_loader(data, workers=0).epoch(epoch, start_step=start)))


def test_an_epoch_begun_over_an_open_one_ends_the_open_one(data):
    loader = _loader(data)
    old = loader.epoch(0)
    next(old)
    new = loader.epoch(1)
    got = [next(new)]
    with pytest.raises(UserError, match="later epoch"):
        next(old)
    got += _copies(new)
    _assert_same(got, _copies(_loader(data, workers=0).epoch(1)))
    loader.close()


def _put(shard: Path, key: bytes, value: bytes) -> bytes:
    env = lmdb.open(str(shard), subdir=True, lock=False)
    with env.begin(write=True) as txn:
        old = txn.get(key)
        txn.put(key, value)
    env.close()
    return old


def test_a_record_failing_in_a_worker_joins_the_workers_and_the_next_epoch_starts_new_ones(tmp_path):
    data = build_data(tmp_path / "jpeg", "jpeg")
    loader = _loader(data)
    i = int(loader.step_params(0, 0)[-1]["index"][0])  # in the last batch of epoch 0: workers busy before it
    shard, key = loader.index.dirs[loader.index.shard_of[i]], loader.index.keys[i]
    good = _put(shard, key, b"\x0f")
    before = _workers()
    with pytest.raises(DamagedRecord):
        for _ in loader.epoch(0):
            pass
    assert _workers() <= before  # joined at the failure, not left to the garbage collector
    _put(shard, key, good)
    _assert_same(_copies(loader.epoch(1)), _copies(_loader(data, workers=0).epoch(1)))
    loader.close()


def test_a_record_failing_in_a_batch_left_in_flight_is_said_by_the_epoch_that_reads_it(tmp_path):
    """Epoch 0 left after its first batch, its second (in flight, on a damaged record) failing while drained: the
    next epoch starts new workers and stops at the record with its sentence."""
    data = build_data(tmp_path / "jpeg", "jpeg")
    loader = _loader(data)
    i = int(loader.step_params(0, 0)[1]["index"][0])
    _put(loader.index.dirs[loader.index.shard_of[i]], loader.index.keys[i], b"\x0f")
    left = loader.epoch(0)
    next(left)
    left.close()
    with pytest.raises(DamagedRecord):
        for _ in loader.epoch(1):
            pass
    loader.close()


def test_a_worker_never_collects_garbage_inherited_from_the_main_process(data, tmp_path, monkeypatch):
    """A forked worker that collects an inherited DALI pipeline hangs in its destructor (seen in the suite): the
    workers start inside core.workers.forking, which freezes what exists, garbage included, out of the children's
    collector.  Here each worker collects as it starts; the garbage's destructor must not run in any of them."""
    import gc
    import os

    from alexnet_pipe.loaders import fallback
    ran_in = tmp_path / "destructor-pids"

    class Cycle:
        def __init__(self):
            self.me = self

        def __del__(self):
            with open(ran_in, "a") as f:
                f.write(f"{os.getpid()}\n")

    def collecting_init(worker_id):
        init(worker_id)
        gc.collect()  # as a worker's own collector may, at any allocation
    init = fallback._init_worker
    monkeypatch.setattr(fallback, "_init_worker", collecting_init)
    Cycle()  # garbage only a collection can free
    loader = _loader(data)
    next(loader.epoch(0))
    pids = [p.pid for p in multiprocessing.active_children()]
    loader.close()
    assert not ran_in.exists(), f"collected in a worker: {ran_in.read_text()} (workers {pids})"
    assert gc.get_freeze_count() == 0  # the main process's collector has it back (a full collection here would
    # take seconds late in the suite: the main process's own collection of it is Python's, not this test's)


def test_no_epoch_collects_garbage_in_the_main_process(data, monkeypatch):
    """A full collection (~170 ms with torch loaded, seconds in a long-lived process) at every epoch stalled the main
    process while the workers ran dry; forking() freezes instead (the test above: workers still never collect what
    they inherit), and the later epochs of persistent workers fork nothing at all."""
    import gc
    collections = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or collect(*a))
    loader = _loader(data)
    for epoch in range(3):
        for _ in loader.epoch(epoch):
            pass
    loader.close()
    assert collections == []
