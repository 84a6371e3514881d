"""The evidence key in an HSM: SoftHSM2 from Debian, through PKCS#11, in-process and in a real
`kepmta serve` whose configuration names the key by URI."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from kepclient import DevServer, imap, kepmta, openssl_verify, p7m, receipts, signed_by, smtp, wait_for

from kepmta import pki
from kepmta.evidence.model import Event, Evidence, Party, Reason
from kepmta.evidence.pkcs11 import Pkcs11Error, Pkcs11Key, Pkcs11Uri, load_pair
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "kep-pin-6174"  # no hex digit run or time: it can only be in the log if leaked


def cannot_run(reason: str) -> None:
    """Skip, except where KEPMTA_REQUIRE_INTEROP is set (.ci/run sets it): there a missing SoftHSM2
    is a failure, so CI can never pass by skipping the HSM tests."""
    if os.environ.get("KEPMTA_REQUIRE_INTEROP"):
        pytest.fail(f"PKCS#11 test cannot run: {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Pki:
    ca: pki.KeyPair
    evidence: pki.KeyPair
    tsa: pki.KeyPair
    ca_pem: Path


def make_pki(directory: Path) -> Pki:
    ca = pki.issue("HSM Test Provider CA", pki.Role.CA)
    ca_pem = directory / f"ca-{uuid.uuid4().hex[:8]}.pem"
    ca_pem.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return Pki(
        ca,
        pki.issue("HSM Test Transaction", pki.Role.EVIDENCE, ca),
        pki.issue("TSA", pki.Role.TSA, ca),
        ca_pem,
    )


@dataclass(frozen=True)
class Hsm:
    dir: Path
    first: Pki  # its evidence key is in token "kepmta"
    second: Pki  # its evidence key is in token "second", never logged in to by the first test


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    """A SoftHSM2 configuration with its own token folder, named in SOFTHSM2_CONF for this process
    and the kepmta processes it starts. Tokens and keys exist before this process first loads the
    module: SoftHSM2 reads its tokens when a process initialises it."""
    if not shutil.which("softhsm2-util") or not Path(MODULE).exists():
        cannot_run("softhsm2 is not installed (apt-get install softhsm2; .ci/run does)")
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    init_token("kepmta")
    init_token("second")
    first, second = make_pki(d), make_pki(d)
    import_key(d, first.evidence, "evidence-a")
    import_key(d, second.evidence, "evidence-b", token="second")
    yield Hsm(d, first, second)
    if old is None:
        del os.environ["SOFTHSM2_CONF"]
    else:
        os.environ["SOFTHSM2_CONF"] = old


def init_token(label: str) -> None:
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", "12345678"],
        check=True,
        capture_output=True,
    )


def import_key(softhsm: Path, pair: pki.KeyPair, label: str, token: str = "kepmta") -> None:
    """Put a key into the token the way an operator would, then forget the file."""
    key_file = softhsm / f"{label}.pem"
    key_file.write_bytes(
        pair.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    subprocess.run(
        ["softhsm2-util", "--import", str(key_file), "--token", token, "--label", label, "--id",
         uuid.uuid4().hex[:8], "--pin", PIN],
        check=True,
        capture_output=True,
    )  # fmt: skip
    key_file.unlink()


def evidence() -> Evidence:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return Evidence(
        evidence_id="hsm-1@kep.test",
        event=Event.SUBMISSION_ACCEPTANCE,
        reason=Reason.RA01,
        details=Reason.RA01.label,
        event_time=now,
        issuer_name="HSM Test KEP",
        issuer_domain="kep.test",
        policy_ids=("urn:oid:1.3.6.1.4.1.99999.2.1",),
        sender=Party("ali.yilmaz@kep.test"),
        sender_auth_time=now,
        sender_auth_method="SMTP AUTH",
        recipients=(Party("ayse.kaya@kep.test"),),
        refers_to_recipient=None,
        message_id="m-1@kep.test",
        ua_message_id="u-1@client.test",
        submission_time=now,
        digest_sha256=bytes(32),
        subject="HSM",
    )


def uri(label: str, token: str = "kepmta") -> str:
    return f"pkcs11:token={token};object={label};type=private?module-path={MODULE}"


async def test_evidence_signed_in_the_token_verifies_with_openssl(softhsm: Hsm, tmp_path: Path) -> None:
    p = softhsm.first
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    pair = load_pair(uri("evidence-a"), pin_file, p.evidence.cert)
    assert isinstance(pair.key, Pkcs11Key)
    signed = await EvidenceSigner(pair, [], BuiltinTsa(p.tsa)).sign(evidence())
    ok, content, printed = openssl_verify(signed.der, str(p.ca_pem), tmp_path)
    assert ok and "timeStampToken" in printed, content
    # The key never leaves the token, and says nothing about itself.
    with pytest.raises(Pkcs11Error):
        pair.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    assert PIN not in repr(pair.key)


def test_a_wrong_pin_a_missing_key_and_a_foreign_certificate_are_refused(
    softhsm: Hsm, tmp_path: Path
) -> None:
    # A token of its own: a PKCS#11 login holds for the whole process, so after another test's
    # login a wrong PIN would not even be asked for.
    p = softhsm.second
    good, bad = tmp_path / "pin", tmp_path / "bad-pin"
    good.write_text(PIN)
    bad.write_text("0000")
    with pytest.raises(Pkcs11Error, match="PIN"):
        load_pair(uri("evidence-b", "second"), bad, p.evidence.cert)
    with pytest.raises(Pkcs11Error, match="no private key"):
        load_pair(uri("absent", "second"), good, p.evidence.cert)
    with pytest.raises(Pkcs11Error, match="does not belong"):
        load_pair(uri("evidence-b", "second"), good, p.tsa.cert)


def test_uris_carrying_a_pin_or_lacking_the_module_are_refused() -> None:
    with pytest.raises(Pkcs11Error, match="pin-value"):
        Pkcs11Uri.parse(f"pkcs11:token=k;object=o?module-path={MODULE}&pin-value=1234")
    with pytest.raises(Pkcs11Error, match="module-path"):
        Pkcs11Uri.parse("pkcs11:token=k;object=o")
    parsed = Pkcs11Uri.parse(f"pkcs11:token=my%20token;id=%01%02?module-path={MODULE}")
    assert (parsed.token, parsed.key_id) == ("my token", b"\x01\x02")


def test_a_server_signs_every_evidence_in_the_hsm(softhsm: Hsm, tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = DevServer(data).start()
    srv.stop()
    # Move the development transaction key into the token and name it by URI instead.
    key_path = data / "pki" / "transaction.key"
    pair = pki.load_pair(data / "pki" / "transaction.pem", key_path)
    import_key(softhsm.dir, pair, "transaction")
    key_path.unlink()
    pin = data / "pki" / "hsm.pin"
    pki.write_private(pin, PIN.encode())
    config = data / "kepmta.toml"
    text = config.read_text().replace(
        'key = "pki/transaction.key"', f'key_uri = "{uri("transaction")}"\npin_file = "pki/hsm.pin"'
    )
    config.write_text(text)
    srv.start()
    try:
        ali, ayse = srv.account(0), srv.account(1)
        subject = f"hsm-{uuid.uuid4().hex[:8]}"
        with smtp(srv, ali) as s:
            assert (
                s.sendmail(ali["address"], [ayse["address"]], signed_by(srv, 0, [ayse["address"]], subject))
                == {}
            )
        m = imap(srv, ali)
        try:
            found = wait_for(lambda: receipts(m, subject, "SubmissionAcceptance"))
            assert found
            assert srv.info is not None
            ok, content, printed = openssl_verify(
                p7m(found[0], "SubmissionAcceptance"), srv.info["provider_ca"], tmp_path
            )
            assert ok and "timeStampToken" in printed, content
        finally:
            m.logout()
        log = srv.log.read_text()
        assert PIN not in log and "PRIVATE KEY" not in log
    finally:
        srv.stop()
    audit = kepmta("evidence", "audit", "--data", str(data))
    assert audit.returncode == 0, audit.stdout + audit.stderr
