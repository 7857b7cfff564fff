"""Test helpers: background runs, the loopback GDC, the SLURM run, workflow copies, synthetic cohorts."""
