"""Comparing learned representations: linear CKA between layers of two models, and per-layer invariance profiles."""
