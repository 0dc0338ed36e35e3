"""Where the platform keeps its local files (the embedded database, exports, staging, the dev
signing key): `EXPORT_PLATFORM_HOME`, else `.export_platform` in the working folder."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "EXPORT_PLATFORM_HOME"


def platform_home() -> Path:
    return Path(os.environ.get(HOME_ENV, ".export_platform")).resolve()
