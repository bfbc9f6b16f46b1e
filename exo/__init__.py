"""exo: one inference pool from the machines you already own."""

__version__ = "0.1.0"
