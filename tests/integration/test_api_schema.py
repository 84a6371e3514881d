"""Schemathesis against the integration API's own OpenAPI document: requests made from the
schema, valid and not, never get a server error, and every answer is as the document says
(status code, content type, headers, body)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from api_fixtures import api_token
from kepclient import DevServer

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_schemathesis_finds_no_server_error_and_no_departure_from_the_schema(
    srv: DevServer, tmp_path: Path
) -> None:
    assert srv.info
    token = api_token(srv, srv.account(0)["address"])
    r = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"https://localhost:{srv.ports['api']}/openapi.json",
            "--tls-verify",
            srv.info["provider_ca"],
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "all",
            # A schema cannot say "an S/MIME message signed by the sender's qualified certificate":
            # the bytes it makes up as a message are rightly refused.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "10",
            "--seed",
            "14",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # where schemathesis keeps its .schemathesis/ folder
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "8 selected / 8 total" in r.stdout
