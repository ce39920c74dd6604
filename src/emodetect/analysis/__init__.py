"""Embedding analysis: clustering and 2-D projections as arrays (plots are drawn elsewhere)."""
