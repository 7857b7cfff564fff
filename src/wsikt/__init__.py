"""wsikt: whole-slide-image survival models with cross-cancer knowledge transfer."""

__version__ = "0.1.0"
