"""Contract tests every backend must pass."""
