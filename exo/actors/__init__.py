"""Supervised Trio actors and the runtime that supervises them."""
