"""Application Default Credentials for secure sources (``grpcs://``, ``https://``).

Looked up when a source is first called, never when it is opened, so code and unit tests can
open sources without credentials. Adapter module (google-auth).
"""

from __future__ import annotations

import google.auth
import google.auth.exceptions

from lrobridge.errors import Unauthenticated

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


def credentials_for(url: str, given: object | None) -> object:
    """``given``, or Application Default Credentials; Unauthenticated naming ``url`` when
    there are none."""
    if given is not None:
        return given
    try:
        creds, _ = google.auth.default(scopes=list(SCOPES))
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise Unauthenticated(f"{url} needs Application Default Credentials: {exc}") from None
    return creds
