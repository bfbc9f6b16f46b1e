"""The HTTP surface: one module per dialect over one backend interface."""
