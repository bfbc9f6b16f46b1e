"""`exo bench`: measure a node the way its clients see it.

`cli` (flags, output files) drives `sweep` (configurations, warm-up, concurrent
streams), which uses `client` (one streamed request, timed chunk by chunk), `prompts`
(prompts exact to the token), `placement` (the `/instances` API); `stats` (pure) turns
measurements into percentiles, `report` and `plot` present them. docs/bench.md.
"""

# What other packages may import: the CLI entry (tests/test_public_surface.py).
PUBLIC_MODULES = ["cli"]
