"""Model cards, the bundled default model, and weight planning."""
