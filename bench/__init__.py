"""mailcast benchmarks: each prints its figures as ratios against a baseline measured in the
same run (these machines are shared and noisy: quote medians)."""
