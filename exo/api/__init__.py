"""The HTTP surface: one module per dialect over one backend interface."""

# The modules other packages may import: the app to serve, the backend interface a node
# implements, the admin views it builds for that interface, the clock it passes in, and
# who may use the API (its keys and origins, what a client sends). The dialects, their
# request and response models and the schemas are this package's own
# (tests/test_public_surface.py).
PUBLIC_MODULES = ["access", "admin_response", "app", "backend", "clock"]
