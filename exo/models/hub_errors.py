"""What can go wrong with the hub, in words a user can act on: exo's exceptions, and
`huggingface_hub`'s and httpx's errors translated into them."""

from __future__ import annotations

from exo.models.hub import NotAModel


class HubError(Exception):
    """A hub failure a user can act on; the message says what happened and what to do."""


class RepoNotFound(HubError):
    pass


class RepoGated(HubError):
    pass


class HubUnreachable(HubError):
    """The hub (or mirror) did not answer; retrying later may succeed."""


class NotEnoughDisk(HubError):
    pass


class DownloadStopped(Exception):
    """A download stopped on purpose (`ByteTally.stop`): not a failure, nothing to retry."""


class CorruptDownload(HubError):
    pass


def translated(repo_id: str, error: Exception) -> Exception:
    """`error` as a `HubError` (or `NotAModel`) when it is not one already."""
    if isinstance(error, HubError | NotAModel):
        return error
    return translate_error(repo_id, error)


def translate_error(repo_id: str, error: Exception) -> Exception:
    from huggingface_hub import errors

    if isinstance(error, errors.GatedRepoError):
        return RepoGated(
            f"{repo_id} is gated: accept its licence on the hub and set HF_TOKEN on every "
            "node (the token given was refused or missing)"
        )
    if isinstance(error, errors.RevisionNotFoundError):
        return RepoNotFound(f"{repo_id} has no such revision")
    if isinstance(error, errors.RepositoryNotFoundError):
        return RepoNotFound(f"no repo {repo_id} on the hub (or it is private: set HF_TOKEN)")
    if isinstance(error, errors.RemoteEntryNotFoundError):
        return NotAModel(f"{repo_id}: {error}")
    if isinstance(error, errors.NotASafetensorsRepoError):
        return NotAModel(f"{repo_id}: no safetensors weights ({error})")
    if isinstance(error, errors.OfflineModeIsEnabled):
        return HubUnreachable(f"HF_HUB_OFFLINE is set and {repo_id} is not cached")
    if isinstance(error, errors.HfHubHTTPError):
        status = error.response.status_code if error.response is not None else 0
        if status in (401, 403):
            return RepoGated(f"the hub refused access to {repo_id} ({status}); check HF_TOKEN")
        if status >= 500 or status in (408, 429):
            return HubUnreachable(f"the hub answered {status} for {repo_id}; retrying later")
        return HubError(f"the hub answered {status} for {repo_id}: {error}")
    if isinstance(error, OSError | TimeoutError) or type(error).__module__.startswith("httpx"):
        return HubUnreachable(
            f"the hub is unreachable for {repo_id}: {type(error).__name__}: {error}"
        )
    return error
