"""Configuration: schema validation, defaults, the sample sheet and cross-key checks."""
