"""Training: one fit loop, one checkpoint format, the fold runner with its null gate, summaries."""
