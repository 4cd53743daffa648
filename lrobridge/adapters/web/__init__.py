"""HTTP serving (Flask): the app, its webhook blueprint and the request/response helpers.

Views decode bytes with pure functions, call the core and map outcomes to status codes in one
table; a ``flask.Request`` never reaches the core.
"""
