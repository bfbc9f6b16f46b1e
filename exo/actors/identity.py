"""A node's identity: created once, kept in its home, so a restart is the same node."""

from __future__ import annotations

import os
import random
from pathlib import Path

from exo.events.ids import NodeId, new_node_id

NODE_ID_FILE = "node_id"


def load_or_create_node_id(home: Path, rng: random.Random) -> NodeId:
    path = home / NODE_ID_FILE
    if path.exists():
        text = path.read_text().strip()
        if not text:
            raise ValueError(f"{path} is empty; delete it to give this node a new identity")
        return NodeId(text)
    home.mkdir(parents=True, exist_ok=True)
    node_id = new_node_id(rng)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n")
    os.replace(tmp, path)
    return node_id
