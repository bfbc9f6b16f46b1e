"""Typed identifiers. New ids come from an injected `random.Random`, never the clock."""

from __future__ import annotations

import random
from typing import NewType

NodeId = NewType("NodeId", str)
InstanceId = NewType("InstanceId", str)
CommandId = NewType("CommandId", str)
RequestId = NewType("RequestId", str)
ModelId = NewType("ModelId", str)


def random_token(rng: random.Random, bits: int = 64) -> str:
    """A hex token drawn from `rng`: deterministic under a seeded generator."""
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def new_node_id(rng: random.Random) -> NodeId:
    return NodeId(f"node-{random_token(rng, 48)}")


def new_command_id(rng: random.Random) -> CommandId:
    return CommandId(f"cmd-{random_token(rng)}")


def new_request_id(rng: random.Random) -> RequestId:
    return RequestId(f"req-{random_token(rng)}")
