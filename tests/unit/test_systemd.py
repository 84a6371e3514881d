"""The systemd units as systemd reads them, and the sd_notify datagrams kepmta sends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kepmta import sdnotify

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def test_the_service_unit_verifies_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (.ci/run installs systemd)"
    # verify checks that ExecStart's program exists: point it at this checkout's kepmta instead of
    # the installed /opt/kepmta/bin/kepmta; every other line is the file as shipped.
    kepmta = Path(sys.executable).parent / "kepmta"
    assert kepmta.exists()
    unit = tmp_path / "kepmta.service"
    unit.write_text((UNITS / "kepmta.service").read_text().replace("/opt/kepmta/bin/kepmta", str(kepmta)))
    text = unit.read_text()
    assert "Type=notify\n" in text and "ExecReload=/bin/kill -HUP $MAINPID\n" in text
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_the_tmpfiles_snippet_makes_a_closed_data_folder(tmp_path: Path) -> None:
    tmpfiles = shutil.which("systemd-tmpfiles")
    assert tmpfiles, "systemd-tmpfiles is missing (.ci/run installs systemd)"
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # The service user as a package would create it; --root resolves names in the root's files.
    (root / "etc" / "passwd").write_text("kepmta:x:990:990::/var/lib/kepmta:/usr/sbin/nologin\n")
    (root / "etc" / "group").write_text("kepmta:x:990:\n")
    r = subprocess.run(
        [tmpfiles, "--create", f"--root={root}", str(UNITS / "kepmta.tmpfiles.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
    data = root / "var" / "lib" / "kepmta"
    st = data.stat()
    assert data.is_dir() and st.st_mode & 0o777 == 0o700
    if os.geteuid() == 0:  # only root can give the folder away
        assert (st.st_uid, st.st_gid) == (990, 990)


@pytest.mark.parametrize("abstract", [False, True])
def test_states_reach_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        if abstract:
            name = f"kepmta-test-{os.getpid()}"
            listener.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            path = tmp_path / "notify"
            listener.bind(str(path))
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        listener.settimeout(10)
        assert sdnotify.ready()
        assert listener.recv(4096).decode().split("\n")[0] == "READY=1"
        assert sdnotify.reloading()
        reloading = listener.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and int(reloading[1].removeprefix("MONOTONIC_USEC=")) > 0
        assert sdnotify.stopping()
        assert listener.recv(4096) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready()
    # A socket that is not there is a warning, not a failure of the server.
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sdnotify.stopping()
