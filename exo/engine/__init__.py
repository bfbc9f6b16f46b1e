"""What runs inside a runner process: model loading and generation with MLX."""

# The modules other packages may import: the runner pipe's protocol, the model
# architectures a placement may split, the chat format's tool-call tags, and the BLAS
# environment runners get. The engine itself (MLX, batching, the native step) runs only
# inside a runner process (tests/test_public_surface.py).
PUBLIC_MODULES = ["architectures", "blas", "chat_format", "protocol"]
