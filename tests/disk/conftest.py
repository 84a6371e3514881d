"""The small filesystem of the full-disk tests, mounted here or, where this process may not mount,
in a user and mount namespace that the whole test runs in (disk_fixtures)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from disk_fixtures import NAMESPACE_ENV, MountRefused, SmallDisk, in_namespace, small_disk

_AGAIN_INSIDE = pytest.StashKey[bool]()


@pytest.fixture
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmallDisk | None]:
    """A 32 MB tmpfs for the server's data folder; None when the test runs in a namespace instead
    (see pytest_pyfunc_call)."""
    try:
        with small_disk(tmp_path / "data", 32) as mounted:
            yield mounted
            return
    except MountRefused as e:
        if os.environ.get(NAMESPACE_ENV):
            pytest.fail(f"cannot mount a tmpfs even as root of a user namespace: {e}")
        request.node.stash[_AGAIN_INSIDE] = True
        yield None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not pyfuncitem.stash.get(_AGAIN_INSIDE, False):
        return None
    # Not skipped: CI must run these, and says plainly why it cannot.
    r = in_namespace(pyfuncitem.nodeid, pyfuncitem.config.rootpath)
    if r.returncode != 0:
        pytest.fail(
            "this process may not mount a tmpfs, and the test failed or could not run in a user and "
            f"mount namespace (unshare --user --map-root-user --mount) either:\n{r.stdout[-6000:]}"
            f"\n{r.stderr[-3000:]}"
        )
    return True
