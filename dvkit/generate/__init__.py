"""Sampling videos: a DDIM loop with per-row adapters, and subject × motion composition."""
