"""No module of exo or the simulator over 500 lines (issue 18): a module that grows past
it has taken a second job; split it where the jobs part."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 500


def test_no_module_is_over_500_lines() -> None:
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in ("exo", "simulations")
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    over = {name: n for name, n in lengths.items() if n > LIMIT}
    assert len(lengths) > 100  # the walk found the packages
    assert not over, f"over {LIMIT} lines: {over}"
