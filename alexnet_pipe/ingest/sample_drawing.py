"""Drawing the sample data's pictures: each class a shape or texture family in one colour family ("red discs",
"green stripes"); inside a class the position, size, rotation, background, clutter, noise and colour vary, so a
small CNN has something to learn that mean colour alone does not give away. Only numpy and OpenCV."""
from __future__ import annotations

import math

import cv2
import numpy as np

from alexnet_pipe.core.colour import hsv_to_rgb
from alexnet_pipe.core.errors import UserError

SHAPES = ("disc", "square", "triangle", "stripes", "checker", "ring", "cross", "star")
SHAPE_PLURALS = ("discs", "squares", "triangles", "stripes", "checkers", "rings", "crosses", "stars")
# (name, hue in degrees); hues far apart so colour families stay apart under jitter
PALETTES = (("red", 0), ("green", 120), ("blue", 235), ("yellow", 58),
            ("magenta", 300), ("cyan", 182), ("orange", 28), ("purple", 268))
COMBOS = len(SHAPES) * len(PALETTES)


def _combo(k: int) -> tuple[int, int, int]:
    """Class k -> (shape, palette, variant). The palette index shifts by one every len(SHAPES)
    classes, so consecutive classes differ in both shape and colour, every (shape, palette) pair
    is used once in the first COMBOS classes, and past 8 classes some share a colour."""
    shape = k % len(SHAPES)
    palette = (k + k // len(SHAPES)) % len(PALETTES)
    return shape, palette, k // COMBOS


def class_name(k: int) -> str:
    """Descriptive name of class k, e.g. "red discs"; past 64 classes the object count grows."""
    shape, palette, variant = _combo(k)
    name = f"{PALETTES[palette][0]} {SHAPE_PLURALS[shape]}"
    return name if variant == 0 else f"{name}, {variant + 1} per image"


def synset_words(k: int) -> str:
    """The words of class k's line in LOC_synset_mapping.txt: its name first, then a synonym."""
    shape, palette, _ = _combo(k)
    return f"{class_name(k)}, synthetic {PALETTES[palette][0]} {SHAPES[shape]} pattern"


def make_wnids(n: int) -> list[str]:
    """n real-looking wnids (`n` + 8 digits), strictly increasing, so sorted order = class order."""
    if not 1 <= n <= 1000:
        raise UserError(f"The sample data supports 1 to 1000 classes, not {n}.")
    # step 91573 > jitter range 50000 keeps them increasing and under 10^8
    return [f"n{1440764 + 91573 * k + (k * 7919) % 50000:08d}" for k in range(n)]


# ----------------------------------------------------------------------------------------------
# drawing

def _hsv_colour(hue_deg: float, sat: float, val: float) -> tuple[int, int, int]:
    """An 8-bit RGB colour from a hue in degrees (any, taken round the circle), saturation and value in 0..1."""
    rgb = hsv_to_rgb(np.array([hue_deg / 360.0 % 1.0, sat, val])) * 255.0
    return tuple(int(c) for c in np.round(rgb))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-saturation colour with smooth large-scale variation."""
    base = np.array(_hsv_colour(rng.uniform(0, 360), rng.uniform(0, 0.35), rng.uniform(0.25, 0.9)), np.float32)
    grid = rng.uniform(-35, 35, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    smooth = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(base + smooth, 0, 255).astype(np.uint8)


def _clutter(img: np.ndarray, rng: np.random.Generator, most: int) -> None:
    """Thin lines and small outlines in any colour: distractors, and noise for mean colour."""
    height, width = img.shape[:2]
    for _ in range(rng.integers(1, most + 1)):
        colour = _hsv_colour(rng.uniform(0, 360), rng.uniform(0, 0.8), rng.uniform(0.2, 1))
        p = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        thickness = int(rng.integers(1, 3))
        if rng.random() < 0.6:
            q = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(img, p, q, colour, thickness, cv2.LINE_AA)
        else:
            radius = int(rng.integers(3, max(4, min(height, width) // 12)))
            cv2.circle(img, p, radius, colour, thickness, cv2.LINE_AA)


def _polygon(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices on the unit scale (radius about 1), centred at 0."""
    if kind == "square":
        angles = np.arange(4) * math.pi / 2 + math.pi / 4
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if kind == "triangle":
        angles = np.arange(3) * 2 * math.pi / 3 - math.pi / 2
        return np.stack([np.cos(angles), np.sin(angles)], 1) * 1.15
    if kind == "star":
        angles = np.arange(10) * math.pi / 5 - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 1.1, rng.uniform(0.38, 0.5))
        return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
    a = rng.uniform(0.28, 0.4)                                                    # cross: half arm width
    return np.array([[a, 1], [a, a], [1, a], [1, -a], [a, -a], [a, -1],
                     [-a, -1], [-a, -a], [-1, -a], [-1, a], [-a, a], [-a, 1]], dtype=np.float64)


def _texture(img: np.ndarray, kind: str, centre, radius: float, angle: float,
             colour, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Stripes or a checkerboard inside a rotated square of half-side `radius`."""
    height, width = img.shape[:2]
    reach = radius * math.sqrt(2)
    x0, x1 = max(0, int(centre[0] - reach)), min(width, int(centre[0] + reach) + 1)
    y0, y1 = max(0, int(centre[1] - reach)), min(height, int(centre[1] + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return 0, 0, 0, 0
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    xs -= centre[0]
    ys -= centre[1]
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    period = radius * rng.uniform(0.25, 0.45)
    inside = (np.abs(u) < radius) & (np.abs(v) < radius)
    if kind == "stripes":
        on = np.floor(u / period) % 2 == 0
    else:
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    img[y0:y1, x0:x1][inside & on] = colour
    return x0, y0, x1 - 1, y1 - 1


def _shape(img: np.ndarray, kind: str, centre, radius: float, angle: float,
           colour, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Draw one object; returns its box (xmin, ymin, xmax, ymax) before clipping."""
    if kind in ("stripes", "checker"):
        return _texture(img, kind, centre, radius, angle, colour, rng)
    shift = 4                                        # sub-pixel coordinates, anti-aliased edges
    scale = 1 << shift
    c = (int(round(centre[0] * scale)), int(round(centre[1] * scale)))
    if kind in ("disc", "ring"):
        thickness = -1 if kind == "disc" else max(2, int(radius * rng.uniform(0.2, 0.35)))
        r = radius if kind == "disc" else radius - thickness / 2
        cv2.circle(img, c, int(round(r * scale)), colour, thickness, cv2.LINE_AA, shift)
        pts = np.array([[-1, -1], [1, 1]], np.float64) * radius
    else:
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = _polygon(kind, rng) @ rot.T * radius
        poly = np.round((pts + centre) * scale).astype(np.int32)
        cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, shift)
    lo, hi = pts.min(0) + centre, pts.max(0) + centre
    return int(lo[0]), int(lo[1]), int(math.ceil(hi[0])), int(math.ceil(hi[1]))


def draw(class_index: int, rng: np.random.Generator, height: int, width: int):
    """(uint8 RGB image, list of object boxes clipped to the image)."""
    shape, palette, variant = _combo(class_index)
    img = _background(rng, height, width)
    _clutter(img, rng, 6)
    count = variant + 1
    short = min(height, width)
    boxes = []
    for _ in range(count):
        colour = _hsv_colour(PALETTES[palette][1] + rng.uniform(-10, 10), rng.uniform(0.6, 1), rng.uniform(0.6, 1))
        radius = short * rng.uniform(0.17, 0.3) / math.sqrt(count)
        # keep the object near the central square that prepare crops
        spread = max(0.0, short / 2 - radius) * 0.8
        centre = np.array([width / 2 + rng.uniform(-spread, spread), height / 2 + rng.uniform(-spread, spread)])
        box = _shape(img, SHAPES[shape], centre, radius, rng.uniform(0, 2 * math.pi), colour, rng)
        boxes.append((max(0, box[0]), max(0, box[1]), min(width - 1, box[2]), min(height - 1, box[3])))
    _clutter(img, rng, 3)                            # some clutter in front: partial occlusion
    return _jitter_and_noise(img, rng), boxes


def _jitter_and_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global contrast/brightness jitter plus uniform per-pixel noise (cheap: uint8 random bytes)."""
    img = cv2.convertScaleAbs(img, alpha=rng.uniform(0.8, 1.15), beta=rng.uniform(-20, 20))
    shift = int(rng.integers(3, 6))                  # noise amplitude 32, 16 or 8 levels
    noise = rng.integers(0, 256, img.shape, dtype=np.uint8) >> shift
    out = cv2.add(img.astype(np.int16), noise.astype(np.int16), dtype=cv2.CV_16S) - (128 >> shift)
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_image(class_index: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One synthetic image of class `class_index`, uint8 RGB (height, width, 3)."""
    return draw(class_index, rng, height, width)[0]
