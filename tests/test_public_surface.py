"""Each package names what other packages may import (its `__init__`'s `PUBLIC_MODULES`:
not `__all__`, which would make a star import load them, MLX included), and
nothing in exo imports past that, imports inside functions included. Tests may reach
inside: a unit test tests a module, not the surface."""

from __future__ import annotations

import importlib

import grimp

PACKAGES = ("exo.actors", "exo.api", "exo.bench", "exo.engine", "exo.events", "exo.models")


def test_no_module_imports_past_a_packages_public_surface() -> None:
    graph = grimp.build_graph("exo")
    past: list[str] = []
    for package in PACKAGES:
        public = set(importlib.import_module(package).PUBLIC_MODULES)
        for module in graph.find_children(package):
            if module.rsplit(".", 1)[1] in public:
                continue
            importers = graph.find_modules_that_directly_import(module)
            outside = sorted(m for m in importers if not m.startswith(package + "."))
            past += [f"{importer} -> {module}" for importer in outside]
    assert not past, past


def test_each_public_name_is_a_module_of_its_package() -> None:
    for package in PACKAGES:
        for name in importlib.import_module(package).PUBLIC_MODULES:
            importlib.import_module(f"{package}.{name}")
