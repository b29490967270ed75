"""The response cache: identical model calls (provider, model, rendered prompt,
parameters) served from Django's ``responses`` cache.

It holds only answers that passed inspection: the cascade does not store what it
gets, it returns it on the Output (``cache_entries``), and the completion stores
it once it has committed with a pass (``settle_cache``). A defect
waiting in Review is never served to the next identical task, and an answer
served from the cache that fails inspection now is dropped from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from django.conf import settings
from django.core.cache import caches

from boards.agents.outputs import Output
from boards.agents.provider_types import ModelResponse
from boards.agents.spec import Tier

logger = logging.getLogger(__name__)

# Tier parameters that change how a call is made, not what it answers: left out of
# the cache key so that, say, a longer timeout still hits the cache.
_TRANSPORT_PARAMETERS = {"timeout", "max_retries", "max_in_flight", "api_key_env", "latency_ms"}


def cache_key(tier: Tier, prompt: str, parameters: dict[str, Any]) -> str:
    """(provider, model, rendered prompt, parameters) as one digest. The base URL is a
    parameter, so two servers serving a model of the same name do not share entries."""
    relevant = {k: v for k, v in sorted(parameters.items()) if k not in _TRANSPORT_PARAMETERS}
    blob = json.dumps([tier.provider, tier.model, prompt, relevant], sort_keys=True, ensure_ascii=False)
    return "response:" + hashlib.sha256(blob.encode()).hexdigest()


def request_key(key: str) -> str:
    """The ledger's request key (ModelCall.request_key) of a cache key: its digest."""
    return key.removeprefix("response:")


def _cache():
    return caches["responses"]


def cache_enabled() -> bool:
    return settings.KAIZEN_RESPONSE_CACHE_SECONDS > 0


def cached_response(key: str) -> ModelResponse | None:
    if not cache_enabled():
        return None
    try:
        value = _cache().get(key)
    except Exception:
        # The cache is an economy, not a dependency: a Redis hiccup costs a model call.
        logger.warning("response cache unavailable for reading", exc_info=True)
        return None
    return _response(value)


def _response(value: Any) -> ModelResponse | None:
    if not isinstance(value, dict):
        return None
    try:
        return ModelResponse(**value)
    except TypeError:
        return None


class Prefetch:
    """The cache's answers to a batch of runs' first calls, read in one round trip.

    A worker runs a batch's cascades on its event loop (boards.agents.runtime),
    where a cache read is a step on a thread and back: for each run, two hops and
    a Redis GET, which cost the worker some 0.3 ms of CPU a task (cProfile,
    bench/line_steps.py). The batch is prepared on one thread first: each run
    names its first call's key there (``want``), and ``fetch`` reads them all
    with one MGET before the cascades start. A cascade then takes its first
    call's answer from here (``answer``), and reads any other (a later tier's)
    as before. What was stored between the read and the call is missed, at the
    cost of a model call, as when the cache is out of reach."""

    def __init__(self) -> None:
        self._wanted: set[str] = set()
        self._found: dict[str, ModelResponse | None] = {}

    def want(self, key: str) -> None:
        self._wanted.add(key)

    def fetch(self) -> None:
        """Read every key wanted (once: on the thread that prepares the batch,
        before its cascades run)."""
        if not self._wanted or not cache_enabled():
            return
        keys = sorted(self._wanted)
        try:
            values = _cache().get_many(keys)
        except Exception:
            # Each cascade reads its own then (a Redis hiccup costs model calls at worst).
            logger.warning("response cache unavailable for reading", exc_info=True)
            return
        self._found = {key: _response(values.get(key)) for key in keys}

    def answer(self, key: str) -> tuple[bool, ModelResponse | None]:
        """(whether ``key`` was read, its answer)."""
        if key in self._found:
            return True, self._found[key]
        return False, None


def settle_cache(outcomes: list[tuple[Output, bool]]) -> None:
    """After a batch of completions committed, for each (output, whether it passed
    inspection): cache the output's fresh responses if it passed; if it is a
    defect served from the cache (stored before its checks changed, or by an
    older version), drop that entry. One write for the batch's entries and one
    delete (boards.services.tasks_complete settles its batch on commit)."""
    stored: dict[str, dict[str, Any]] = {}
    dropped: list[str] = []
    for output, passed in outcomes:
        if passed:
            stored.update((key, _value(response)) for key, response in output.cache_entries)
        elif output.cached_from:
            dropped.append(output.cached_from)
    # Dropped first: a fresh answer that passed, stored under the key a defect of
    # the same batch was served from, is the one kept.
    if dropped:
        try:
            _cache().delete_many(dropped)
        except Exception:
            logger.warning("response cache unavailable for deleting", exc_info=True)
    if stored and settings.KAIZEN_RESPONSE_CACHE_SECONDS > 0:
        try:
            _cache().set_many(stored, timeout=settings.KAIZEN_RESPONSE_CACHE_SECONDS)
        except Exception:
            logger.warning("response cache unavailable for writing", exc_info=True)


def _value(response: ModelResponse) -> dict[str, Any]:
    """What the cache keeps of a response (read back by ``_response``)."""
    return {
        "text": response.text,
        "confidence": response.confidence,
        "tokens_in": response.tokens_in,
        "tokens_out": response.tokens_out,
        "latency_ms": response.latency_ms,
        "confidence_source": response.confidence_source,
    }
