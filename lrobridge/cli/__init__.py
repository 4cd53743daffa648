"""The ``lrobridge`` command line (:mod:`.main`), the local stack (:mod:`.dev`), Google's
emulators as child processes (:mod:`.emulator`) and the webhook commands (:mod:`.webhooks`);
:mod:`.common` holds what they share (loading the bridge, the API client, JSON output).

The top layer: it may import anything; nothing in the package imports it."""
