"""WAV folders → HDF5 log-mel datasets (no Lightning here)."""
