"""The statistics stage: chance references, paired intervals and matrix-cell CIs from prediction files."""
