"""The container's WSGI entry point: ``lrobridge serve --app lrobridge.wsgi:app``.

Owns one thing: a :class:`~lrobridge.bridge.Bridge` configured from the environment and its
Flask app, created when this module is imported. This bridge has no Python callbacks: on Cloud
Run deliver completions with webhooks or your own subscriptions to the completion topic. For
callbacks, serve your own module instead, e.g. ``lrobridge serve --app myservice.hooks:bridge``;
any other WSGI server can serve ``app`` too, but ``lrobridge serve`` is the one that reads
requests whole before a thread runs them (see :mod:`lrobridge.server`).
"""

from __future__ import annotations

from lrobridge.bridge import Bridge

bridge = Bridge()
app = bridge.create_app()
