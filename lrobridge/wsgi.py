"""The container's WSGI entry point: ``gunicorn lrobridge.wsgi:app``.

Owns one thing: a :class:`~lrobridge.bridge.Bridge` configured from the environment and its
Flask app, created when gunicorn's worker imports this module (never in the master, so no store
connection or Pub/Sub channel crosses a fork). This bridge has no Python callbacks: on Cloud Run
deliver completions with webhooks or your own subscriptions to the completion topic. For
callbacks, give gunicorn your own module instead, e.g. ``myservice.hooks:app`` with
``app = bridge.create_app()``; the hooks in :mod:`lrobridge.gunicorn_conf` find that bridge too.
"""

from __future__ import annotations

from lrobridge.bridge import Bridge

bridge = Bridge()
app = bridge.create_app()
