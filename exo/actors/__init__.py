"""Supervised Trio actors and the runtime that supervises them."""

# The modules other packages may import: what the composition root (exo/node.py) wires
# and the CLI starts. The rest (the control core, placement, decide, the pure helpers
# beside them) is this package's own; tests/test_public_surface.py holds the line.
PUBLIC_MODULES = [
    "api_host",
    "command_client",
    "control",
    "data_plane",
    "discovery",
    "download",
    "file_share",
    "identity",
    "link_auth",
    "link_probe",
    "links",
    "mesh",
    "network",
    "node_metrics",
    "replica",
    "request_tally",
    "runner_handle",
    "runners",
    "runtime",
    "topology",
    "wire",
]
