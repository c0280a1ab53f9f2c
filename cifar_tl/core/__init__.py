"""core: what every other part stands on and that knows nothing of data, models or runs: user errors, atomic
files and the cache, resumable state, statistics and metrics, the device and its precision."""
