"""A whole decode step of a llama-family model, for one or several sequences, in one
native call (`native/llama_decode.c`) on every core: what MLX spends ~1000 primitive
dispatches on per token on a CPU becomes seven matrix products (the kernel's own, each
weight read once for all sequences) and a few vector loops per layer.

It reads the MLX model's own float32 weights in place (no copy) and keeps its keys and
values in its own caches. Only plain llama-shaped decoders qualify (`NotSupported` says
why another does not): pre-norm RMSNorm blocks, bias-free q/k/v/o and gated-SiLU MLP
projections, RoPE over the whole head. A CPU runner decodes its streams with it
(`native_lanes.py`); measured in `benchmarks/cpu_decode.py` and `benchmarks/serving.py`
(docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
import platform
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from exo.engine.blas import build_native, cpu_flags, native_cache_dir

SOURCE = Path(__file__).with_name("native") / "llama_decode.c"
_PREFIX = "libexo-llama-decode-"
_FLOATS = ctypes.POINTER(ctypes.c_float)
_LAYER_FIELDS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "wgate", "wup", "wdown")


class NotSupported(ValueError):
    """The model is not a plain llama-shaped float32 decoder this kernel computes."""


class _Layer(ctypes.Structure):
    _fields_ = [(name, _FLOATS) for name in _LAYER_FIELDS]


class _Model(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_int) for name in ("hidden", "layers", "heads", "kv_heads")),
        *((name, ctypes.c_int) for name in ("head_dim", "inter", "vocab", "max_positions")),
        ("interleaved", ctypes.c_int),
        ("slots", ctypes.c_int),
        ("max_rows", ctypes.c_int),
        ("threads", ctypes.c_int),
        ("eps", ctypes.c_float),
        ("embed", _FLOATS),
        ("head", _FLOATS),
        ("final_norm", _FLOATS),
        ("layer", ctypes.POINTER(_Layer)),
        ("rope_cos", _FLOATS),
        ("rope_sin", _FLOATS),
        ("keys", _FLOATS),
        ("values", _FLOATS),
        ("work", _FLOATS),
    ]


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernel (built once per source version into the user's cache)."""
    return library_for("native")


def library_for(march: str, directory: Path | None = None) -> ctypes.CDLL:
    """The kernel built for `-march=<march>` (a runner: "native"; a test: an instruction
    set this CPU runs but would not pick, such as AVX2's on an AVX-512 machine)."""
    # Not -ffast-math: a shared library built with it sets flush-to-zero for the whole
    # process when loaded. Reassociation alone lets GCC vectorize the dot products.
    flags = (
        "-O3",
        f"-march={march}",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-fno-signed-zeros",
        "-fassociative-math",
    )
    # Built for this CPU (-march=native): its flags are part of the build's name, so a
    # home shared by different machines never loads another's build.
    machine = f"{platform.machine()} {' '.join(sorted(cpu_flags()))}"
    built = build_native(SOURCE, directory or native_cache_dir(), _PREFIX, flags, machine)
    if built is None:
        raise NotSupported("the native decode kernel could not be built (no C compiler?)")
    lib = ctypes.CDLL(str(built))
    ints = ctypes.POINTER(ctypes.c_int)
    lib.exo_decode_rows.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, ints, ints, ints, _FLOATS]
    lib.exo_decode_work_floats.argtypes = [ctypes.POINTER(_Model)]
    lib.exo_decode_work_floats.restype = ctypes.c_size_t
    return lib


class NativeDecoder:
    """A decoder over `model`'s weights with `slots` sequences' caches: `step(token)` feeds
    slot 0 its next token, `step_rows` one token to each of several slots at once; both
    return the logits after it (a view, overwritten by the next call)."""

    def __init__(
        self,
        model: nn.Module,
        max_positions: int,
        slots: int = 1,
        threads: int | None = None,
        kernel: ctypes.CDLL | None = None,
    ) -> None:
        self._lib = kernel or library()
        self.model = model
        inner = _decoder_of(model)
        layers = inner.layers
        first = layers[0]
        attention, mlp = first.self_attn, first.mlp
        heads, kv_heads = attention.n_heads, attention.n_kv_heads
        head_dim = attention.q_proj.weight.shape[0] // heads
        hidden = inner.embed_tokens.weight.shape[1]
        vocab = inner.embed_tokens.weight.shape[0]
        inter = mlp.gate_proj.weight.shape[0]
        self._keep: list[Any] = []  # every array the kernel points into
        per_layer = [self._layer(layer) for layer in layers]
        head = getattr(model, "lm_head", None)
        rope = first.self_attn.rope
        cos, sin = _rope_tables(rope, head_dim, max_positions)
        # Anonymous mappings: only the positions written take memory, and `release`
        # gives a slot's back to the OS when its sequence ends.
        cache_shape = (slots, len(layers), kv_heads, max_positions, head_dim)
        self._maps = [mmap.mmap(-1, 4 * math.prod(cache_shape)) for _ in range(2)]
        self._keys, self._values = (
            np.frombuffer(m, np.float32).reshape(cache_shape) for m in self._maps
        )
        self._logits = np.zeros((slots, vocab), np.float32)
        self._tokens, self._positions, self._slots = (np.zeros(slots, np.int32) for _ in range(3))
        self._layers = (_Layer * len(layers))(*per_layer)
        self._model = _Model(
            hidden,
            len(layers),
            heads,
            kv_heads,
            head_dim,
            inter,
            vocab,
            max_positions,
            int(bool(rope.traditional)),
            slots,
            slots,
            threads if threads is not None else usable_cores(),
            float(first.input_layernorm.eps),
            self._floats(inner.embed_tokens.weight),
            self._floats(head.weight if head is not None else inner.embed_tokens.weight),
            self._floats(inner.norm.weight),
            self._layers,
            self._floats(cos),
            self._floats(sin),
            self._floats(self._keys),
            self._floats(self._values),
        )
        work = np.zeros(self._lib.exo_decode_work_floats(ctypes.byref(self._model)), np.float32)
        self._model.work = self._floats(work)
        self.max_positions = max_positions
        self.slots = slots
        self.position = 0  # of slot 0, for `step`

    def step(self, token: int) -> np.ndarray:
        """Feed slot 0 its next token; its logits."""
        if self.position >= self.max_positions:
            raise ValueError(f"the cache holds {self.max_positions} positions")
        logits = self.step_rows([token], [self.position], [0])[0]
        self.position += 1
        return logits

    def step_rows(self, tokens: list[int], positions: list[int], slots: list[int]) -> np.ndarray:
        """Feed `tokens[r]` at `positions[r]` of slot `slots[r]` (distinct slots), every
        weight read once for all rows; the rows' logits (rows x vocab)."""
        rows = len(tokens)
        if not 0 < rows <= self.slots or len(positions) != rows or len(slots) != rows:
            raise ValueError(f"between 1 and {self.slots} rows, each a token, position, slot")
        self._tokens[:rows], self._positions[:rows], self._slots[:rows] = tokens, positions, slots
        ints = ctypes.POINTER(ctypes.c_int)
        status = self._lib.exo_decode_rows(
            ctypes.byref(self._model),
            rows,
            self._tokens.ctypes.data_as(ints),
            self._positions.ctypes.data_as(ints),
            self._slots.ctypes.data_as(ints),
            self._logits.ctypes.data_as(_FLOATS),
        )
        if status:
            raise ValueError(
                f"a token outside the vocabulary, a position past {self.max_positions}, "
                "or a slot out of range or twice"
            )
        return self._logits[:rows]

    @staticmethod
    def takes(cache: list[Any]) -> bool:
        """Whether `cache` is mlx-lm's plain per-layer `KVCache` (every position kept in
        order), the only kind `load_cache` copies from."""
        from mlx_lm.models.cache import KVCache

        return all(type(entry) is KVCache for entry in cache)

    def release(self, slot: int) -> None:
        """Give the whole pages of a slot's keys and values back to the OS (they read as
        zeros after): its sequence ended. A slot is always loaded before it is fed."""
        per_slot = self._keys[0].nbytes
        page = mmap.PAGESIZE
        start = -(-slot * per_slot // page) * page  # whole pages inside the slot
        end = (slot + 1) * per_slot // page * page
        if end > start:
            for mapping in self._maps:
                mapping.madvise(mmap.MADV_DONTNEED, start, end - start)

    def load_cache(self, cache: list[Any], length: int, slot: int = 0) -> None:
        """Start a slot from mlx-lm's per-layer caches (`KVCache`) holding `length`
        positions: their keys and values are copied in (slot 0's next `step` feeds
        position `length`)."""
        if length > self.max_positions:
            raise ValueError(f"the cache holds {self.max_positions} positions, not {length}")
        for layer, entry in enumerate(cache):
            keys, values = entry.keys[0, :, :length, :], entry.values[0, :, :length, :]
            self._keys[slot, layer, :, :length] = np.asarray(keys.astype(mx.float32))
            self._values[slot, layer, :, :length] = np.asarray(values.astype(mx.float32))
        if slot == 0:
            self.position = length

    def mlx_cache(self, slot: int = 0, length: int | None = None) -> list[Any]:
        """mlx-lm's per-layer caches (`KVCache`) of a slot's first `length` positions
        (slot 0: every position fed so far): for the prompt cache, or for the batch
        generator to go on from."""
        from mlx_lm.models.cache import KVCache

        length = self.position if length is None else length
        out = []
        for layer in range(self._keys.shape[1]):
            entry = KVCache()
            # Contiguous first: MLX copies a strided numpy view ~60x slower (0.3 s for a
            # bundled-model slot of 300 positions, a stall of every stream at each reply's end).
            keys = mx.array(np.ascontiguousarray(self._keys[slot, layer, :, :length])[None])
            values = mx.array(np.ascontiguousarray(self._values[slot, layer, :, :length])[None])
            entry.state = (keys, values, length)
            out.append(entry)
        return out

    def _layer(self, layer: Any) -> _Layer:
        attention, mlp = layer.self_attn, layer.mlp
        linears = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj)
        linears += (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if any(not isinstance(m, nn.Linear) or "bias" in m for m in linears):
            raise NotSupported("projections with biases or quantized weights")
        return _Layer(
            self._floats(layer.input_layernorm.weight),
            *(self._floats(m.weight) for m in linears[:4]),
            self._floats(layer.post_attention_layernorm.weight),
            *(self._floats(m.weight) for m in linears[4:]),
        )

    def _floats(self, array: mx.array | np.ndarray) -> Any:
        """A pointer into `array` as float32, row-major; kept alive with this decoder."""
        if isinstance(array, mx.array):
            if array.dtype != mx.float32:
                raise NotSupported(f"weights are {array.dtype}, not float32")
            mx.eval(array)
        view = np.asarray(array)
        if view.dtype != np.float32 or not view.flags["C_CONTIGUOUS"]:
            raise NotSupported("weights must be contiguous float32")
        self._keep.append(view)
        return view.ctypes.data_as(_FLOATS)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


# Architectures whose blocks are exactly what the kernel computes (others add norms on
# q and k, multipliers, fused projections or softcapping, which it would silently skip).
ARCHITECTURES = ("llama",)


def _decoder_of(model: nn.Module) -> Any:
    kind = getattr(model, "model_type", None)
    if kind not in ARCHITECTURES:
        raise NotSupported(
            f"architecture {kind!r} (the kernel computes {', '.join(ARCHITECTURES)})"
        )
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or not layers or not hasattr(inner, "embed_tokens"):
        raise NotSupported("not a decoder with model.layers and model.embed_tokens")
    first = layers[0]
    needed = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
    if not all(hasattr(first, name) for name in needed):
        raise NotSupported("layers are not pre-norm attention and MLP blocks")
    if not all(isinstance(getattr(first, n), nn.RMSNorm) for n in needed[2:]):
        raise NotSupported("norms are not RMSNorm")
    mlp = first.mlp
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        raise NotSupported("the MLP is not gated (gate, up, down)")
    attention = first.self_attn
    if set(attention.children()) != {"q_proj", "k_proj", "v_proj", "o_proj", "rope"}:
        raise NotSupported(f"attention holds {sorted(attention.children())}")
    head_dim = attention.q_proj.weight.shape[0] // attention.n_heads
    if abs(attention.scale - head_dim**-0.5) > 1e-6:
        raise NotSupported(f"attention scale {attention.scale} is not 1/sqrt({head_dim})")
    return inner


def _rope_tables(rope: nn.Module, head_dim: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (positions x head_dim/2) of the model's own rope module: rotating a
    vector whose pairs are (1, 0) gives (cos, sin) for each pair, with whatever
    frequencies and scaling the module uses."""
    if getattr(rope, "dims", head_dim) != head_dim or not hasattr(rope, "traditional"):
        raise NotSupported("RoPE rotates part of the head, or is of an unknown kind")
    half = head_dim // 2
    first = np.zeros(head_dim, np.float32)
    first[0::2] = 1 if rope.traditional else 0
    first[:half] = first[:half] if rope.traditional else 1
    probe = mx.broadcast_to(mx.array(first), (1, 1, positions, head_dim))
    turned = rope(probe, offset=0).reshape(positions, head_dim).astype(mx.float32)
    mx.eval(turned)
    table = np.array(turned)
    if rope.traditional:
        return np.ascontiguousarray(table[:, 0::2]), np.ascontiguousarray(table[:, 1::2])
    return np.ascontiguousarray(table[:, :half]), np.ascontiguousarray(table[:, half:])
