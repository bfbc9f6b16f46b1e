"""The HTTP surface: one module per dialect over one backend interface."""

# The modules other packages may import: the app to serve, and the backend interface a
# node implements. The dialects, their request models and the schemas are this
# package's own (tests/test_public_surface.py).
PUBLIC_MODULES = ["app", "backend"]
