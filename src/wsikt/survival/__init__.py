"""Survival maths: time bins, losses and metrics (numpy; torch only in losses and bins)."""
