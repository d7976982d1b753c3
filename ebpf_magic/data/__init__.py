"""Data from the kernel as numpy and pandas: maps, streams, histograms, stacks, dtypes."""
