"""The bounds of every count and size a user gives, in one place, with the reason for each.

Without an upper bound a slip (an extra zero, a count meant for another option) reached a C library as a number it
cannot hold (DALI's and torch's sizes are 64-bit: a TypeError traceback), started processes until the machine gave
out, or ran for ever. Each bound lies beyond any sensible use, so no real run meets it.
"""
from __future__ import annotations

# processes or threads of one stage: more than any machine this runs on has cores
MAX_PROCESSES = 512
# images in one batch: 65536 images of 224 px are 39 GB of float32, more than any one device holds
MAX_BATCH = 1 << 16
# a stored image's side, and so a crop's: prepare's --size tops out here (16 Mpixel images)
MAX_SIZE = 4096
# the network's width multiplier: 64x the paper's channels is about 250 billion weights, a terabyte
MAX_WIDTH = 64.0
# an augmentation's strength (PCA lighting sigma, colour jitter): at 1000 every pixel saturates already, and far
# beyond it the noise overflowed float32 into NaN pixels, written into pictures as garbage without a word
MAX_STRENGTH = 1000.0
# seeds go to numpy's SeedSequence (non-negative) and torch.manual_seed (64 bits)
MAX_SEED = 2 ** 63 - 1
# the largest float32: a learning rate (times its multipliers) beyond it cannot even be applied to a weight
FLOAT32_MAX = 3.4028234663852886e38
