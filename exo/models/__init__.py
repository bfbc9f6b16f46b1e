"""Model cards, the bundled default model, and weight planning."""

# The modules other packages may import (tests/test_public_surface.py).
PUBLIC_MODULES = [
    "bundled",
    "cards",
    "catalog",
    "gguf",
    "hub",
    "hub_client",
    "hub_errors",
    "hub_files",
]
