"""Webhooks: registered HTTP endpoints that receive operation completions, signed and retried.

Module map (pure modules import no Flask, gRPC, Pub/Sub or HTTP client; ruff's banned-api
check holds that, and the adapters are listed in pyproject.toml's per-file-ignores):

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
    :mod:`~lrobridge.wiring.parts`    wiring, and how deliveries progress per process
adapters
    :mod:`~lrobridge.storage.sqlite.webhooks`      SQLite (the main store's file, own connection)
    :mod:`~lrobridge.adapters.webhook_sender`     urllib3 connections pinned to the checked address
    :mod:`~lrobridge.adapters.web.webhooks`      the Flask blueprint under /v1
    :mod:`~lrobridge.cli.webhooks`        ``lrobridge webhooks ...``

User documentation: README.md, section "Webhooks", and docs/webhooks.md.
"""
