"""``boto3.Session`` for tests that make many: each a session of its own (its own credentials,
region and profile), all reading AWS's service models through one botocore loader, so the
models are parsed once per test process rather than once per session (about 0.15 s of CPU
each). Signing, credentials and clients are botocore's own, as with ``boto3.Session(...)``."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.loaders
import botocore.session

_LOADER = botocore.loaders.create_loader()


def session(**options: Any) -> boto3.Session:
    """``boto3.Session(**options)`` sharing the process's model loader."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    return boto3.Session(botocore_session=core, **options)
