"""Webhooks: registered HTTP endpoints that receive operation completions, signed and retried.

Module map. This package is pure: it may import :mod:`lrobridge.core`,
:mod:`lrobridge.delivery`, config, errors and standardwebhooks, never Flask, gRPC, Pub/Sub, an
HTTP client, the storage or an adapter (pyproject.toml's import-linter contracts hold it); its
adapters live in their own folders:

pure
    :mod:`~lrobridge.webhooks.filters`    which events a webhook receives
    :mod:`~lrobridge.webhooks.schedule`   retry schedule, Retry-After, disabling endpoints
    :mod:`~lrobridge.webhooks.payload`    the request body and the webhook-id of an event
    :mod:`~lrobridge.webhooks.signing`    ``whsec_`` secrets, Standard Webhooks signatures
    :mod:`~lrobridge.webhooks.ssrf`       URL rules, address classification, pinning
    :mod:`~lrobridge.webhooks.model`      records and the ``WebhookStore`` protocol
    :mod:`~lrobridge.webhooks.sink`       push -> delivery records, before the ack
    :mod:`~lrobridge.webhooks.worker`     attempts, leases, drains; the ``Sender`` protocol
    :mod:`~lrobridge.webhooks.service`    the API behind REST, CLI and ``bridge.webhooks``
    :mod:`~lrobridge.webhooks.resources`  REST JSON forms and request parsing
wiring
    :mod:`~lrobridge.wiring.parts`        its parts, and how deliveries progress per process
    :mod:`~lrobridge.wiring.runtime`      the background delivery thread
adapters
    :mod:`~lrobridge.storage.sqlite.webhooks`     SQLite (the main store's file, own connection)
    :mod:`~lrobridge.storage.firestore.webhooks`  Firestore (the main store's database)
    :mod:`~lrobridge.adapters.webhook_sender`     urllib3 connections pinned to the checked address
    :mod:`~lrobridge.adapters.web.webhooks`      the Flask blueprint under /v1
    :mod:`~lrobridge.cli.webhooks`        ``lrobridge webhooks ...``

User documentation: README.md, section "Webhooks", and docs/webhooks.md.
"""
