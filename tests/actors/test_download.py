"""The download actor's pure parts: what a failure inside its nurseries was."""

from __future__ import annotations

from exo.actors.download import first_cause
from exo.models.hub_errors import CorruptDownload, HubUnreachable


def test_a_transient_failure_inside_nested_groups_is_found_so_the_download_is_retried() -> None:
    unreachable = HubUnreachable("the hub is unreachable")
    corrupt = CorruptDownload("bad file")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [corrupt, unreachable])])
    assert first_cause(nested) is unreachable
    assert first_cause(ExceptionGroup("one", [corrupt])) is corrupt
    assert first_cause(corrupt) is corrupt
