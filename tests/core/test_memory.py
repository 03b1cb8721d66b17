"""core.memory: aligned scratch buffers (the loaders' hot buffers are not left where malloc happens to put them)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from alexnet_pipe.core.memory import aligned_empty


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple),
       dtype=st.sampled_from([np.uint8, np.float32, np.float64, np.int64]),
       align=st.sampled_from([16, 32, 64, 4096]), garbage=st.integers(0, 4096))
def test_aligned_empty_starts_on_the_boundary_and_is_a_whole_writable_array(shape, dtype, align, garbage):
    before = np.empty(garbage, np.uint8)  # whatever was allocated before moves malloc's next address
    a = aligned_empty(shape, dtype, align)
    assert a.ctypes.data % align == 0
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    values = np.arange(a.size).reshape(shape).astype(dtype)
    a[...] = values
    del before  # freed now (reference counting): the bytes under the view stay owned by it
    np.testing.assert_array_equal(a, values)
