"""A bridge serving process for kill tests: ``python -m tests.support.tasks_server PORT``.

Builds :class:`lrobridge.Bridge` from the environment (``LROBRIDGE_WATCH_MODE=tasks`` and the
rest are set by the test) and serves its Flask app on 127.0.0.1:PORT with werkzeug, threaded,
until it is killed. Prints ``ready`` once it listens.
"""

from __future__ import annotations

import sys

from werkzeug.serving import make_server

from lrobridge import Bridge


def main() -> None:
    port = int(sys.argv[1])
    bridge = Bridge()
    server = make_server("127.0.0.1", port, bridge.create_app(), threaded=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
