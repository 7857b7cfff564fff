"""The embedded demo cohort: synthetic H&E-like slides with planted survival ground truth."""

from wsikt.demo.cohort import plan_cohort, write_demo_cohort

__all__ = ["plan_cohort", "write_demo_cohort"]
