"""Cross-cancer transfer: the embedding cache, the transfer matrix, ROUPKT and the baselines."""
