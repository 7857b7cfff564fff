"""Feature extraction: the encoder registry, batched patch embedding and ingest of CLAM/TRIDENT features."""
