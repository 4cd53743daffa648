"""The Firestore backend (many instances, e.g. Cloud Run): :mod:`.client` holds the client,
bounded retries, the error mapping, transactions and lease claims every Firestore store uses."""
