"""Shared plumbing every stage uses: atomic writes and tables, logs, devices, magnification names, model facts."""
