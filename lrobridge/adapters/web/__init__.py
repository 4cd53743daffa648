"""HTTP serving (Flask): the app, its webhook blueprint and the request/response helpers.

Views decode bytes with pure functions, call the core and map outcomes to status codes in one
table; a ``flask.Request`` never reaches the core. May import Flask and werkzeug, the core,
the features (watching, delivery, operations, webhooks) and :mod:`lrobridge.ports`; never
wiring, the CLI or the bridge: :func:`~lrobridge.adapters.web.app.create_app` takes the few
parts its views use.
"""
