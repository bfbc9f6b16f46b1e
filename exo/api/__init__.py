"""The HTTP surface: one module per dialect over one backend interface."""

# The modules other packages may import: the app to serve, the backend interface a node
# implements, the admin views it builds for that interface, and the clock it passes in.
# The dialects, their request and response models and the schemas are this package's own
# (tests/test_public_surface.py).
PUBLIC_MODULES = ["app", "backend", "admin_response", "clock"]
