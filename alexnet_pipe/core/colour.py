"""HSV -> RGB, the one conversion: the sample data's colours and the loaders' hue jitter both go through it."""
from __future__ import annotations

import numpy as np


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(..., 3) HSV in [0, 1] (hue as a fraction of the circle) -> (..., 3) RGB in [0, 1]: the six sectors of the
    colour circle, in float64 (no 8-bit rounding of hue, saturation or value on the way)."""
    h, s, v = np.moveaxis(np.asarray(hsv, np.float64), -1, 0)
    sector = np.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.astype(np.int64) % 6
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    r = np.choose(sector, [v, q, p, p, t, v])
    g = np.choose(sector, [t, v, v, q, p, p])
    b = np.choose(sector, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)
