"""Acquisition: the GDC client and the embedded demo cohort."""
