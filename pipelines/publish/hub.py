"""The Hugging Face Hub side of `rayzero publish`: token, network and revision checks before any work, and
the upload. Every Hub failure (offline mode, no network, HTTP errors) becomes one `PublishError` line."""

from __future__ import annotations

import os
from pathlib import Path


class PublishError(Exception):
    """A publish that cannot go ahead; the message is one line saying what to do."""


def _hub_token() -> str:
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then publish again")
    return token


def _hub_call(what: str, fn, *args, **kwargs):
    """A Hub API call whose failure becomes one line: offline mode, no network, HTTP errors."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        return fn(*args, **kwargs)
    except OfflineModeIsEnabled:
        raise PublishError(f"{what}: HF_HUB_OFFLINE is set; unset it to publish to the Hub") from None
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PublishError(f"{what}: the Hub refused ({first})") from None
    except Exception as e:  # httpx transport errors (DNS, refused, timeout) and OSError
        if isinstance(e, OSError) or type(e).__module__.split(".")[0].startswith("httpx"):
            raise PublishError(f"{what}: cannot reach the Hub ({type(e).__name__}: {e}); check the network "
                               f"or publish to a directory") from None
        raise


def preflight(target, overwrite: bool) -> "object":
    """Token, network, repo and revision checks, before any work. Returns the HfApi to upload with."""
    from huggingface_hub import HfApi, constants, get_session

    token = _hub_token()
    if constants.HF_HUB_OFFLINE:
        raise PublishError(f"{target.to}: HF_HUB_OFFLINE is set; unset it to publish to the Hub")
    # huggingface_hub's client has no timeout: a black-holed network would hang. Bound connecting only
    # (uploads of large files may take long), at HF_HUB_ETAG_TIMEOUT seconds (default 10).
    session = get_session()
    session.timeout = type(session.timeout)(None, connect=float(constants.HF_HUB_ETAG_TIMEOUT))
    api = HfApi(token=token)
    _hub_call(target.to, api.create_repo, target.repo_id, exist_ok=True)
    rev = target.revision or "main"
    refs = _hub_call(target.to, api.list_repo_refs, target.repo_id)
    if rev not in {b.name for b in refs.branches}:
        _hub_call(target.to, api.create_branch, target.repo_id, branch=rev)
    elif not overwrite:
        files = _hub_call(target.to, api.list_repo_files, target.repo_id, revision=rev)
        if [f for f in files if f != ".gitattributes"]:
            raise PublishError(f"{target.to}: revision '{rev}' already has files; pass --overwrite to replace "
                               f"them or publish to another @revision")
    return api


def upload(api, target, folder: Path, message: str, overwrite: bool) -> None:
    """Upload `folder` as one commit to the target's revision (replacing what it held with `overwrite`)."""
    _hub_call(target.to, api.upload_folder, repo_id=target.repo_id, folder_path=str(folder),
              revision=target.revision or "main", commit_message=message, delete_patterns="*" if overwrite else None)
