"""A local stand-in for the Hugging Face hub, and the model repos it serves in tests."""
