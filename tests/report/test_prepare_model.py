"""`bench prepare --model`: the scaling model's arithmetic, and its measurements on a small tree."""
from __future__ import annotations

import math
import pickle

import pytest

from alexnet_pipe.report import prepare_model as pm


def test_chunk_is_prepares():
    from alexnet_pipe.ingest.chunks import CHUNK
    assert pm.CHUNK == CHUNK


def test_worker_rate_extrapolates_each_doubling():
    measured = {1: 400.0, 2: 360.0}
    assert pm.worker_rate(2, measured) == 360.0
    assert pm.worker_rate(8, measured) == pytest.approx(360.0 * 0.9 ** 2)
    assert pm.worker_rate(64, {1: 400.0}) == 400.0  # nothing measured beside others: no slowdown assumed
    assert pm.worker_rate(16, {1: 300.0, 2: 330.0}) == 330.0  # faster beside others is noise, not extrapolated


@pytest.mark.parametrize("n, parent, want_bound", [(4, 1e6, "cores"), (64, 5000.0, "parent (the single writer)")])
def test_predict_takes_the_least_of_workers_parent_and_cores(n, parent, want_bound):
    measured = {1: 100.0}
    row = pm.predict(n, measured, parent)  # n workers on n cores
    a, p = 1 / 100.0, 1 / parent
    assert row["images_per_sec"] == pytest.approx(min(n * 100.0, parent, n / (a + p)))
    assert row["bound"] == want_bound
    spare = pm.predict(4, measured, 1e6, cores=16)  # cores to spare: the workers are the limit
    assert spare["bound"] == "workers" and spare["images_per_sec"] == pytest.approx(400.0)
    one = pm.predict(1, measured, 400.0)  # one worker works in prepare's own process: a + p per image
    assert one["images_per_sec"] == pytest.approx(1 / (1 / 100.0 + 1 / 400.0))


def test_whole_rate_adds_listing_and_start():
    assert pm.whole_rate(1000, 500.0, listing=1.0, start=1.0) == pytest.approx(1000 / 4.0)


def test_canned_result_is_a_chunk_of_the_asked_record_size():
    result = pickle.loads(pickle.dumps(pm.canned_result(5000, 32)))
    assert len(result.records) == pm.CHUNK and result.stats.pixel_sum.shape == (32, 32, 3)
    from alexnet_pipe.shards import Datum
    assert all(len(Datum.from_bytes(v).data) == 5000 for _k, v in result.records)


def test_writer_alone_writes_shards_of_real_records():
    out = pm.writer_alone(2000, 32, records=100, shard_size=64)
    assert out["records"] == 4 * pm.CHUNK  # whole chunks
    assert out["records_per_sec"] > 0 and out["parent_cpu_us_per_record"] > 0 and out["merge_us_per_chunk"] >= 0
    assert math.isfinite(out["unpickle_us_per_chunk"])


def test_the_model_runs_end_to_end_on_a_small_tree():
    r = pm.run_model(pm.ModelSettings(images=40, writer_records=64, max_workers=1, size=64))
    assert [row["workers"] for row in r["curve"]] == [1, 2, 4, 8, 16, 32, 64]
    assert r["curve"][0]["measured"] > 0 and all(row["measured"] is None for row in r["curve"][1:])
    assert set(r["writer"]) == {"imagenet", "64px", "32px"} and r["writer"]["imagenet"]["record_bytes"] == 110_000
    assert r["h100"]["measured_whole"] == 2067.0 and r["h100"]["predicted_whole"] > 0
