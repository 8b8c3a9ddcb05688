"""Where the data files dsmon ships live: inside the package when installed from a wheel
(pyproject's package-dir maps them to dsmon/<name>), in the source tree otherwise."""

from __future__ import annotations

from pathlib import Path


def shipped_dir(package_name: str, checkout: str) -> Path:
    """dsmon/<package_name> when installed, the source tree's `checkout` directory when run
    from a checkout (or an editable install, which maps the package there)."""
    here = Path(__file__).resolve().parent
    packaged = here / package_name
    return packaged if packaged.is_dir() else here.parent / checkout
