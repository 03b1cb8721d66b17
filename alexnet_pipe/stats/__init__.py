"""The training set's mean image and RGB PCA eigenpairs, and the checked readers of those files."""
from alexnet_pipe.stats.compute import StatsSettings, format_report, run_stats  # noqa: F401 (API)
from alexnet_pipe.stats.readers import load_stats, read_mean, read_pca  # noqa: F401 (API)
