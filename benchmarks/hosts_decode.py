"""Decode speed of pipeline and tensor instances across three hosts with their own
addresses (network namespaces on a bridge, `tests/integration/netns.py`), with no delay,
5 ms, and 5 ms with 1 % loss on every host's wire, next to what the placement model
predicts for the links the nodes measured (`GET /instances/previews`).

The instance's ranks are guarded and sealed (`exo/engine/ring_guard.py`). Each host's
wire runs through a user-space relay that applies the delay and the loss (this kernel may
lack netem), so on a small machine the relays share the cores with the ranks: the figures
are what this setup gives, the prediction is what the model expects of real wires.

    sudo .venv/bin/python benchmarks/hosts_decode.py --tokens 16 --json /tmp/hosts_decode.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.netns import bridged_namespaces
from tests.integration.nodes import start_cluster, wait_for
from tests.integration.test_distributed import _measured, delete, place
from tests.integration.test_hosts import PHASES, _predicted, _stream, impaired_wires


def measure(tokens: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="exo-bench-") as tmp, ExitStack() as stack:
        hosts = stack.enter_context(bridged_namespaces(3, impairable=True))
        nodes = start_cluster(Path(tmp), Path(tmp) / "models", 3, hosts=hosts)
        try:
            wait_for(lambda: _measured(nodes), 60, "three hosts agreeing, every link measured")
            for strategy in ("pipeline", "tensor"):
                instance = place(nodes[0], strategy, nodes)
                for name, delay_ms, loss_percent in PHASES:
                    with impaired_wires(hosts, nodes[0], delay_ms, loss_percent):
                        _, speed = _stream(nodes[0], tokens)
                        figures[f"{strategy}, {name}"] = {
                            "measured_tok_s": round(speed, 2),
                            "predicted_tok_s": round(_predicted(nodes[0], strategy), 2),
                        }
                    print(f"{strategy}, {name}: {figures[f'{strategy}, {name}']}", flush=True)
                delete(nodes[0], instance["id"])
        finally:
            for node in nodes:
                node.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="decode across three namespaced hosts")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures = measure(args.tokens)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
