"""The Firestore backend (many instances, e.g. Cloud Run): :mod:`.client` holds the client,
bounded retries, the error mapping, transactions and lease claims every Firestore store uses.
May import google-cloud-firestore, :mod:`lrobridge.storage.rules`, the core and the webhook
records; never an adapter, the wiring or the other backend."""
