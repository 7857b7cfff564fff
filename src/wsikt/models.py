"""MIL aggregators (kept importable as ``wsikt.models``); the code lives in :mod:`wsikt.aggregators`."""

from wsikt.aggregators import (  # noqa: F401
    ABMIL, LOSSES, MODELS, PRIMARY, REGISTRY, Aggregator, Chowder, CrossFusion, DSCA, DSMIL, Expert, GatedAttention,
    PoolMIL, TransMIL, build_model, model_scales, pack_arrays, pad_bags,
)
