"""What runs inside a runner process: model loading and generation with MLX."""
