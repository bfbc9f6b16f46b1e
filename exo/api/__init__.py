"""The HTTP surface: one module per dialect over one backend interface."""

# The modules other packages may import: the app to serve, the backend interface a
# node implements, and who may use the API (its keys and origins, what a client sends).
# The dialects, their request models and the schemas are this package's own
# (tests/test_public_surface.py).
PUBLIC_MODULES = ["access", "app", "backend"]
