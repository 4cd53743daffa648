"""The ``lrobridge`` command line (:mod:`.main`), the local stack (:mod:`.dev`), Google's
emulators as child processes (:mod:`.emulator`) and the webhook commands (:mod:`.webhooks`)."""
