"""Whether the Hugging Face hub can be asked at all, found out once and quickly.

With the hub out of reach, ``datasets`` and ``huggingface_hub`` retry each request for
about a minute and print a line per try. ``ensure_reachable_or_offline`` asks once, with a
short timeout, and when the hub does not answer switches these libraries to offline mode
(what ``HF_HUB_OFFLINE=1`` does), so a cached copy still loads and a missing one fails at
once; ``HubUnreachable`` then says in one line what was asked for and what to do.
"""

from __future__ import annotations

import logging
import os
from functools import cache

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 4.0
_switched: str | None = None  # why this process went offline by itself


class HubUnreachable(ConnectionError):
    """What needs the hub cannot have it: a hub id not cached here, or an upload, with the
    hub out of reach (or offline mode on)."""


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@cache
def _probe() -> str | None:
    """None when the hub's endpoint answers within the timeout, else why not. An HTTP
    answer of any status counts: the hub is there."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S, follow_redirects=False)
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no answer'}"
    return None


def go_offline() -> None:
    """What ``HF_HUB_OFFLINE=1`` does, for this process and the ones it starts."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config
    except ImportError:  # pragma: no cover - datasets is a base dependency
        return
    datasets.config.HF_HUB_OFFLINE = True


def ensure_reachable_or_offline(warn: bool = True) -> str | None:
    """None when the hub may be asked; else why not (offline mode, or no answer within
    ``PROBE_TIMEOUT_S``), with the libraries switched to their local caches (said once,
    with ``warn``)."""
    global _switched
    if offline():
        return _switched or "offline mode is on (HF_HUB_OFFLINE=1)"
    why = _probe()
    if why is not None and warn:
        logger.warning("the hub (%s) is out of reach (%s): reading only the local cache",
                       _endpoint(), why)  # fmt: skip
    if why is not None:
        go_offline()
        _switched = f"the hub is out of reach ({why})"
    return _switched


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def unreachable(key: str, value: str, why: str, kind: str = "repository") -> HubUnreachable:
    """The one-line error for hub id ``value`` (given as ``key``) that the cache lacks."""
    return HubUnreachable(
        f"{key}: {value!r} is not a local path (looked from {os.getcwd()}), and as a hub "
        f"{kind} id it is not in the local cache while {why}; give an existing local path, "
        + (
            "or unset HF_HUB_OFFLINE to download it"
            if "HF_HUB_OFFLINE" in why
            else "or download it where the hub is reachable (huggingface-cli download)"
        )
    )


def require_hub(what: str) -> None:
    """``what`` (an upload) needs the hub itself: one line at once if it is out of reach."""
    why = ensure_reachable_or_offline(warn=False)
    if why is not None:
        fix = (
            "unset HF_HUB_OFFLINE"
            if "HF_HUB_OFFLINE" in why
            else "connect to it, or set HF_ENDPOINT to a hub you can reach"
        )
        raise HubUnreachable(f"{what} needs the hub ({_endpoint()}), but {why}: {fix}")
