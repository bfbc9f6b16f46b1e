"""The vocabulary and the pure core: ids, facts, events, commands, codec, state, log."""

# The modules other packages may import: all of the vocabulary and the core
# (tests/test_public_surface.py).
PUBLIC_MODULES = [
    "codec",
    "commands",
    "events",
    "facts",
    "ids",
    "log",
    "replay",
    "snapshot",
    "state",
]
