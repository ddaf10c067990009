"""Baselines people would pick instead of JiSi, as pure functions over a bank's arrays."""
