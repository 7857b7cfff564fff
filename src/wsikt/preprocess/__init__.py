"""Preprocessing: open a slide, segment tissue, lay the aligned multi-magnification patch grid, QC images."""
