"""Deterministic cluster simulations: the production actors on a seeded, simulated network (issue 3)."""
