"""The bridge the container-command test serves: one callback that takes a while (like a slow
webhook), writing marker files to $LROBRIDGE_TEST_MARKERS when it starts and when it finishes."""

from __future__ import annotations

import logging
import os
import pathlib
import time

from lrobridge import Bridge, CompletionEvent

bridge = Bridge()


@bridge.on_complete()
def slow_callback(event: CompletionEvent) -> None:
    markers = pathlib.Path(os.environ["LROBRIDGE_TEST_MARKERS"])
    (markers / "started").write_text(event.name)
    logging.getLogger("lrobridge.test").info("callback for %s", event.name)
    time.sleep(float(os.environ.get("LROBRIDGE_TEST_CALLBACK_SECONDS", "2")))
    (markers / "finished").write_text(event.name)


app = bridge.create_app()
