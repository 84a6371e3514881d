"""The development server most integration tests share: one `kepmta serve --dev` per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kepclient import DevServer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("kep") / "data").start()
    yield server
    server.stop()
