"""The replicated state cut into the sections a page shows (`GET /events?view=sections`).

A page that watched raw events would need a copy of `apply` in JavaScript, kept in step
with the Python one forever. Instead the node sends whole sections, and only those that
changed: the state's maps are persistent, so a section whose map is the same object as in
the last state sent is unchanged and costs nothing to skip. Derived sections (instance
status, model downloads) are recomputed when a map they read changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import to_builtins

from exo.actors.instances_host import instance_view
from exo.api.admin_response import ModelView
from exo.events.codec import to_plain
from exo.events.state import State

# Section name -> the state maps it is derived from.
SECTIONS: dict[str, tuple[str, ...]] = {
    "nodes": ("nodes",),
    "links": ("links",),
    "instances": ("instances", "downloads", "runners"),
    "runners": ("runners",),
    "downloads": ("downloads",),
    "in_flight": ("in_flight",),
    "request_counters": ("request_counters",),
    "models": ("models", "downloads", "instances"),
}


def changed_sections(
    state: State,
    previous: State | None,
    model_views: Callable[[], list[ModelView]],
) -> dict[str, Any]:
    """Every section of `state` whose source maps differ from `previous`'s (all of them
    when there is no previous state). `model_views` gives the models section (the node
    adds the bundled cards and catalogue aliases the state does not hold)."""
    changed: dict[str, Any] = {}
    for name, sources in SECTIONS.items():
        if previous is not None and all(
            getattr(state, source) is getattr(previous, source) for source in sources
        ):
            continue
        changed[name] = _section(state, name, model_views)
    return changed


def _section(state: State, name: str, model_views: Callable[[], list[ModelView]]) -> Any:
    if name == "instances":
        views = {i: instance_view(state, state.instances[i]) for i in sorted(state.instances)}
        return to_builtins(views)
    if name == "models":
        return to_builtins(model_views())
    return to_plain(getattr(state, name))
