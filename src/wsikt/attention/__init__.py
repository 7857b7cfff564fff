"""Per-patch attention of trained models over their test patients' slides (the heatmaps' data).

Reads saved models and feature files only: nothing here trains. ``wsikt.formats.attention``
owns the files it writes; ``wsikt.report.heatmaps`` draws them.
"""
