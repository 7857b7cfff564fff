"""The cohort: survival labels, leak-free splits, the bag index and patient bags."""
