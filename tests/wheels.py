"""A package to install in tests of ``%pip install``: built by hand, so that tests need no build backend and no
package index."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

TINY_PACKAGE = "nbos_tinypkg"  # importing it gives VALUE = 42


def tiny_wheel(folder: Path) -> Path:
    """Write a minimal pure-Python wheel of :data:`TINY_PACKAGE` into ``folder`` and return its path."""
    info = f"{TINY_PACKAGE}-0.1.dist-info"
    files = {
        f"{TINY_PACKAGE}/__init__.py": b"VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {TINY_PACKAGE}\nVersion: 0.1\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = (
        "".join(
            f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
            f"{len(data)}\n"
            for name, data in files.items()
        )
        + f"{info}/RECORD,,\n"
    )
    path = folder / f"{TINY_PACKAGE}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{info}/RECORD", record)
    return path
