"""Whether the Hugging Face Hub can be reached, found out at once.

huggingface_hub retries a failed connection five times with back-off, so that loading a hub name without a network
takes about 50 s before it fails, and as long before it falls back to the files in the local HF cache. The loaders
of hub names (tokenizers, weights, config.json) ask :func:`hub_unreachable` first and, when the Hub cannot be
reached, read the local HF cache only (``local_files_only=True``): a cached name loads at once, an uncached one fails
at once with the reason.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import urlparse

__all__ = ["hub_unreachable", "hub_local_only"]

log = logging.getLogger("mosaicbert")

# Behind a proxy only the request itself can tell whether the Hub answers: no direct probe then.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
PROBE_TIMEOUT_S = 3.0


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (offline mode set, its host name unknown, its port closed or silent for
    ``PROBE_TIMEOUT_S``), or None when it may be reached. Probed once per process, by a TCP connection to the Hub
    endpoint (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    url = urlparse(constants.ENDPOINT)
    if not url.hostname:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{constants.ENDPOINT} is unreachable ({e.strerror or type(e).__name__})"
    return None


def hub_local_only(name: str) -> bool:
    """``local_files_only`` for loading hub name ``name``: True (and said once in the log) when the Hub cannot be
    reached."""
    reason = hub_unreachable()
    if reason:
        _say_local_only(reason, name)
    return reason is not None


@functools.lru_cache(maxsize=None)
def _say_local_only(reason: str, name: str) -> None:
    log.info("%s: %s is read from the local Hugging Face cache only", reason, name)
