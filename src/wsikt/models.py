"""MIL aggregators (kept importable as ``wsikt.models``); the code lives in :mod:`wsikt.aggregators`."""

from wsikt.aggregators import (  # noqa: F401
    ABMIL,
    DSCA,
    DSMIL,
    LOSSES,
    MODELS,
    PRIMARY,
    REGISTRY,
    Aggregator,
    Chowder,
    CrossFusion,
    Expert,
    GatedAttention,
    PoolMIL,
    TransMIL,
    build_model,
    model_scales,
    pack_arrays,
    pad_bags,
)
