"""The controller's one HTTP client, for plain-HTTP calls on loopback (instances, the builtin router's
admin endpoint). One client, because building one loads a TLS context (~20 ms each here), and
``trust_env=False`` so that a proxy setting in the environment never routes a loopback call elsewhere."""

from __future__ import annotations

import functools

import httpx

from artifact.predlog import CHECK_HEADER


@functools.cache
def client() -> httpx.Client:
    """Every call is marked as the controller's own (:data:`CHECK_HEADER`): kept out of the prediction log."""
    return httpx.Client(timeout=5.0, verify=False, trust_env=False, headers={CHECK_HEADER.decode(): "1"})
