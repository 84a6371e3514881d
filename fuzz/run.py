"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser that hostile input reaches.

Each target feeds the bytes libFuzzer makes to one parser and lets through only that parser's own
refusal: the error type that carries what the edge answers (BadCommand and CommandFailed for IMAP,
AddressError for an SMTP address, HeaderError, CmsError, RemError, ...) or, for the verifiers, a
report. Any other exception is a crash and libFuzzer stops with the input that caused it; so does
an input that takes longer than --timeout seconds or more than --rss-mb of memory.

    python fuzz/run.py --list
    python fuzz/run.py --target imap-command --runs 5000     # bounded, as tests/fuzz runs it
    python fuzz/run.py --target mime --seconds 600           # a longer local run
    python fuzz/run.py --target mime crash-1234abcd          # run one saved input again

Seed inputs are made here at each start and written to a corpus folder (--corpus, by default a
temporary one) that libFuzzer grows as it finds new paths.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import io
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import atheris

# The parsers are instrumented for coverage; the modules they import for other work (the database,
# the ledger and its archives, mailbox bookkeeping) are not: instrumenting them too doubled the
# start-up time of every run.
NOT_PARSERS = [
    "kepmta.pki",
    "kepmta.db",
    "kepmta.db.runner",
    "kepmta.db.schema",
    "kepmta.evidence.archive",
    "kepmta.evidence.checkpoint",
    "kepmta.evidence.ledger",
    "kepmta.evidence.revocation",
    "kepmta.evidence.signer",
    "kepmta.evidence.timeline",
    "kepmta.evidence.tsa",
    "kepmta.imap.index",
    "kepmta.imap.mailbox",
    "kepmta.imap.notify",
]

with atheris.instrument_imports(include=["kepmta"], exclude=NOT_PARSERS):
    from kepmta import addresses, pki
    from kepmta.evidence import bundle
    from kepmta.evidence.model import Event, Evidence, Party, Reason
    from kepmta.evidence.verify import Report, verify_evidence
    from kepmta.evidence.xml import from_xml, to_xml
    from kepmta.headers import HeaderError, read_headers
    from kepmta.imap import binary, cache, condstore, fetch, folders, search, sort
    from kepmta.imap.protocol import (
        Args,
        BadCommand,
        CommandFailed,
        CommandReader,
        ConnectionClosed,
        Limits,
        ParenList,
        Refused,
        SequenceSet,
        String,
        parse_command,
        parse_date_time,
        parse_head,
    )
    from kepmta.maildir import MailboxNameError, Maildir
    from kepmta.message import entity
    from kepmta.policy.refusal import PolicyError
    from kepmta.policy.signature import check_signature
    from kepmta.rem.digest import original_digest
    from kepmta.rem.inbound import RemError, read_rem, read_rem_headers
    from kepmta.smime import cms, der
    from kepmta.smime.sender import CHECKS, verify_sender
    from kepmta.smtp.data import DataReader, SpoolingSMTP

# Per input: far above what any of these parsers needs for inputs of max_len, far below a stall.
DEFAULT_TIMEOUT = 10
DEFAULT_RSS_MB = 2048


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    max_len: int


class Broken(AssertionError):
    """A parser answered, but not as its contract says (a bound or invariant was not kept)."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise Broken(what)


class _Scratch:
    """One file and one folder this process reuses for the parsers that read paths."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kepmta-fuzz-"))
        self.file = self.root / "input.eml"
        self.spool = self.root / "spool"
        self.spool.mkdir()

    def write(self, data: bytes) -> Path:
        self.file.write_bytes(data)
        return self.file


_SCRATCH = _Scratch()
_LOOP = asyncio.new_event_loop()


# --- IMAP -------------------------------------------------------------------------------------------

_FOLDER_NAMES = ("INBOX", "Sent", "Kanıt", "A", "A.B", "A.B.C", "Arşiv.2024", "x%y", "")
_IMAP_SEEDS = [
    b'a1 LOGIN "ali@kep.test" {8}\r\nparola-1\r\n',
    b"a2 SELECT INBOX (CONDSTORE QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n",
    b"a3 UID FETCH 1:*,4294967295 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.2048> BINARY[2])"
    b" (CHANGEDSINCE 12345 VANISHED)\r\n",
    b"a4 SEARCH CHARSET UTF-8 OR (FROM {3}\r\nali SINCE 1-Feb-2024) NOT UID 1:5 LARGER 100\r\n",
    b'a5 LIST "" "*%A.%x"\r\n',
    b"a6 STORE 1:3 (UNCHANGEDSINCE 200) +FLAGS.SILENT (\\Seen $Forwarded)\r\n",
    b'a7 APPEND Sent (\\Seen) "14-Jul-2024 02:44:25 -0700" {5+}\r\nhello\r\n',
    b"a8 SORT (REVERSE DATE SUBJECT) UTF-8 ALL\r\n",
    b'a9 RENAME "&AEQ-ok" "Ar&AV8-iv.2024"\r\n',
]


def _imap_arguments(data: bytes) -> None:
    """Tokenise a command and read its arguments as the session does before touching a mailbox."""
    cmd = parse_command(data)
    args = Args(cmd.args)
    name = cmd.name
    if name == "UID":
        name = args.atom("command").upper()
    if name == "SEARCH":
        search.parse_program(args)
    elif name == "SORT":
        sort.parse_criteria(args)
        search.parse_program(args)
    elif name == "FETCH":
        SequenceSet.parse(args.atom("sequence set")).intervals(4294967295)
        fetch.parse_items(args.next("FETCH attributes"))
        condstore.parse_fetch_modifiers(args)
    elif name == "STORE":
        SequenceSet.parse(args.atom("sequence set")).intervals(7)
        condstore.parse_store_modifiers(args)
    elif name in ("SELECT", "EXAMINE"):
        folders.name_from_wire(args.astring("mailbox"))
        condstore.parse_select_params(args)
    elif name in ("LIST", "LSUB"):
        reference = folders.name_from_wire(args.astring("reference"))
        pattern = folders.name_from_wire(args.astring("pattern"))
        full = reference + pattern
        if len(full) <= folders.MAX_PATTERN:
            matcher = folders.WildcardPattern.compile(full)
            for folder in _FOLDER_NAMES:
                matcher.matches(folder)
    elif name in ("CREATE", "RENAME"):
        for _ in range(1 if name == "CREATE" else 2):
            new = folders.valid_new_name(folders.name_from_wire(args.astring("mailbox")))
            with contextlib.suppress(MailboxNameError):
                Maildir(_SCRATCH.root).folder_dir(new)
    elif name == "APPEND":
        folders.name_from_wire(args.astring("mailbox"))
        tok = args.next("message literal")
        if isinstance(tok, ParenList):
            tok = args.next("message literal")
        if isinstance(tok, String) and not tok.literal:
            parse_date_time(tok.value.decode("ascii", "replace"))


def imap_command(data: bytes) -> None:
    with contextlib.suppress(BadCommand, CommandFailed):
        _imap_arguments(data)
    parse_head(data)  # None or a Command, never an exception


async def _no_continuation() -> None:
    return None


async def _read_commands(data: bytes) -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    reader = CommandReader(stream)
    limits = Limits(line=1024, literal=256, command=2048, message=1 << 20)

    async def admit(head: bytes, index: int, size: int) -> Path | None:
        # As the session does for APPEND: the message literal goes to a file.
        cmd = parse_head(head)
        if cmd is None or cmd.name != "APPEND" or index > 1:
            return None
        return _SCRATCH.spool / f"append-{index}"

    for _ in range(16):
        try:
            raw = await reader.command(_no_continuation, limits, admit)
        except Refused:
            continue
        except ConnectionClosed:
            break
        with contextlib.suppress(BadCommand):
            parse_command(raw.data, raw.files)
        _check(len(raw.data) <= limits.line + limits.command, "a command held more than its limits")
        raw.discard()
    _check(not any(_SCRATCH.spool.iterdir()), "a literal file was left behind")


def imap_reader(data: bytes) -> None:
    _LOOP.run_until_complete(_read_commands(data))


def _wildcard_reference(pattern: str, name: str) -> bool:
    """RFC 3501 §6.3.8 by definition, over every split of the name (small inputs only)."""
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(_wildcard_reference(rest, name[i:]) for i in range(len(name) + 1))
    if head == "%":
        stop = name.find(".")
        stop = len(name) if stop < 0 else stop
        return any(_wildcard_reference(rest, name[i:]) for i in range(stop + 1))
    return bool(name) and name[0] == head and _wildcard_reference(rest, name[1:])


def imap_list(data: bytes) -> None:
    pattern_raw, _, name_raw = data.partition(b"\n")
    pattern = pattern_raw.decode("latin-1")
    name = name_raw.decode("latin-1")
    matched = folders.WildcardPattern.compile(pattern).matches(name)
    if len(pattern) <= 8 and len(name) <= 16:
        _check(matched == _wildcard_reference(pattern, name), f"{pattern!r} against {name!r}")
    # A name that is not canonical modified UTF-7 is a NO (CommandFailed), not a BAD.
    with contextlib.suppress(BadCommand, CommandFailed):
        folders.name_from_wire(pattern_raw)


# --- MIME and RFC 5322 headers ----------------------------------------------------------------------

_MIME_SEED = (
    b"From: =?UTF-8?B?w4dpw6dlaw==?= <cicek@kep.test>\r\nTo: a@b.test, group: c@d.test;\r\n"
    b"Subject: =?iso-8859-9?Q?=DE=FEk?= re: [x] fwd\r\nDate: Tue, 14 May 2024 10:20:30 +0300\r\n"
    b'Content-Type: multipart/mixed; boundary="o"\r\n\r\npre\r\n--o\r\n'
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Merhaba =C3=BC\r\n--o\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n"
    b"Content-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\nContent-Type: text/html\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nPGI+eDwvYj4=\r\n--i--\r\n--o\r\n"
    b'Content-Type: application/pdf; name*0="a"; name*1="b.pdf"\r\n'
    b"Content-Disposition: attachment; filename=b.pdf\r\nContent-Transfer-Encoding: x-uue\r\n\r\n"
    b"JVBERi0=\r\n--o--\r\nepilogue\r\n"
)


def _parts(part: entity.Part, path: tuple[int, ...]) -> list[tuple[tuple[int, ...], entity.Part]]:
    found = [(path, part)]
    for i, child in enumerate(part.children, 1):
        found += _parts(child, (*path, i))
    if part.message is not None:
        found += _parts(part.message, (*path, 1))
    return found


def mime_message(data: bytes) -> None:
    summary = cache.summarize(data, len(data), whole=True)
    _check(summary.header_end <= len(data), "the header ends past the message")
    top = entity.parse(data)
    for path, part in _parts(top, ()):
        _check(part.start <= part.body_start <= part.end <= len(data), "a part outside its message")
        fetch.locate(top, path)
        search.searchable_text(data, part, include_header=True)
        with contextlib.suppress(binary.UnknownCte):
            binary.decoded(data, part)


def message_headers(data: bytes) -> None:
    try:
        headers = read_headers(_SCRATCH.write(data))
    except HeaderError:
        return
    _check(headers.header_end <= len(data), "the header ends past the message")
    _check(not any(ord(c) < 0x20 for c in headers.subject), "a control character in the subject")


# --- SMTP -------------------------------------------------------------------------------------------


def smtp_data(data: bytes) -> None:
    """Feed DATA in the chunks the first bytes say, with a limit; the reader never loses track."""
    if len(data) < 3:
        return
    limit = data[0] * 8
    sizes = [b % 17 + 1 for b in data[1:3]]
    stream = data[3:]
    out = io.BytesIO()
    reader = DataReader(out, limit)
    pos, rest, turn = 0, None, 0
    while pos < len(stream) and rest is None:
        n = sizes[turn % 2]
        rest = reader.feed(stream[pos : pos + n])
        pos += n
        turn += 1
    outcome = reader.outcome
    written = out.getvalue()
    _check(len(written) <= min(outcome.size, limit), "more written than the message or the limit")
    _check(outcome.too_big == (outcome.size > limit), "too_big disagrees with the size")
    if rest is not None:
        _check(stream[:pos].endswith(rest), "the bytes after the end marker are not the stream's")
        _check(outcome.too_big or len(written) == outcome.size, "a message below the limit cut short")


_SMTP_ARGS = [
    b"<ali.veli@kep.test>",
    b'<"a b"@kep.test> SIZE=100',
    b"<@route.test:x@kep.test>",
    b"postmaster",
    b"<>",
    b"ali@[127.0.0.1]",
    b"<\xc3\xa7@kep.test> SMTPUTF8",
]


_SMTP_SERVER = SpoolingSMTP(object(), loop=_LOOP)


def smtp_address(data: bytes) -> None:
    """An address argument as aiosmtpd takes it from MAIL/RCPT, then as kepmta parses it."""
    text = data.decode("utf-8", "surrogateescape")
    address, _ = _SMTP_SERVER._getaddr(text)
    for candidate in (text, address):
        if candidate is None:
            continue
        try:
            parsed = addresses.parse(candidate)
        except addresses.AddressError:
            continue
        shown = str(parsed)
        _check(shown.isascii() and shown == shown.lower(), f"not a normalised address: {shown!r}")
        _check(not any(c in shown for c in "/\\\x00 ") and ".." not in shown, f"unsafe address {shown!r}")
        _check(addresses.parse(shown) == parsed, "the address does not parse back to itself")


# --- S/MIME, CMS and DER ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Signer:
    ca: pki.KeyPair
    person: pki.KeyPair


_SIGNER: list[_Signer] = []


def _signer() -> _Signer:
    if not _SIGNER:
        ca = pki.issue("Fuzz CA", pki.Role.CA)
        person = pki.issue("Fuzz Person", pki.Role.SMIME, ca, email="ali.veli@kep.test")
        _SIGNER.append(_Signer(ca, person))
    return _SIGNER[0]


def _b64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))


def _signed(top_fields: bytes, content: bytes) -> bytes:
    """A multipart/signed message: `content` (a whole MIME entity) and its detached signature."""
    signer = _signer()
    signature = cms.sign(signer.person, content=content, detached=True, chain=(signer.ca.cert,)).dump()
    return (
        top_fields + b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b' micalg=sha-256; boundary="sig"\r\n\r\n--sig\r\n'
        + content
        + b"\r\n--sig\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(signature) + b"\r\n--sig--\r\n"
    )


def _smime_seeds() -> list[bytes]:
    content = b"Content-Type: text/plain; charset=utf-8\r\n\r\nMerhaba.\r\n"
    fields = b"From: ali.veli@kep.test\r\nTo: a@kep.test\r\nSubject: s\r\nMessage-ID: <1@kep.test>\r\n"
    opaque = cms.sign(_signer().person, content=content, detached=False).dump()
    return [
        _signed(fields, content),
        fields + b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(opaque) + b"\r\n",
    ]


def smime(data: bytes) -> None:
    signer = _signer()
    path = _SCRATCH.write(data)
    verdict = verify_sender(path, "ali.veli@kep.test", [signer.ca.cert], dt.datetime.now(dt.UTC))
    _check(tuple(c.name for c in verdict.checks) == CHECKS, "a verdict without its four checks")
    try:
        check_signature(verdict)
    except PolicyError as e:
        _check(e.refusal.smtp_code >= 500, "a failed signature check that is not a refusal")
    else:
        _check(verdict.ok, "a failed check let through")


def _cms_seeds() -> list[bytes]:
    person = _signer().person
    return [
        cms.sign(person, content=b"x", detached=False).dump(),
        cms.sign(person, content=b"y", detached=True, chain=(_signer().ca.cert,)).dump(),
    ]


def cms_der(data: bytes) -> None:
    with contextlib.suppress(der.DerError):
        der.spans(data)
    with contextlib.suppress(der.DerError):
        der.elements(data)
    try:
        ci = cms.load(data)
    except cms.CmsError:
        ci = None
    if ci is not None:
        try:
            cms.check_structure(ci)
            cms.signer_certificate(ci)
        except cms.CmsError:
            pass
    report = verify_evidence(data, [_signer().ca.cert], [])
    _check(isinstance(report, Report), "verify_evidence gave no report")


# --- evidence, bundles and REM messages -------------------------------------------------------------


def _evidence() -> Evidence:
    return Evidence(
        evidence_id="ev-1@kep.test",
        event=Event.CONTENT_CONSIGNMENT,
        reason=Reason.RD01,
        details="İleti bırakıldı <tamam> & kaydedildi.",
        event_time=dt.datetime(2024, 5, 2, 10, 15, 30, tzinfo=dt.UTC),
        issuer_name="Fuzz KEP A.Ş.",
        issuer_domain="kep.test",
        policy_ids=("urn:oid:1.2.3",),
        sender=Party("ali.veli@kep.test", "Ali Veli"),
        sender_auth_time=dt.datetime(2024, 5, 2, 10, 0, tzinfo=dt.UTC),
        sender_auth_method="password",
        recipients=(Party("ayse.kaya@kep.test", "Ayşe Kaya"),),
        refers_to_recipient=1,
        message_id="m1@kep.test",
        ua_message_id="u1@client.test",
        submission_time=dt.datetime(2024, 5, 2, 10, 15, tzinfo=dt.UTC),
        digest_sha256=bytes(32),
        subject="Sözleşme & ödeme",
    )


def evidence_xml(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        from_xml(data)


def _bundle_seed() -> bytes:
    xml = to_xml(_evidence())
    members = {"evidence/1.xml": xml, "message.json": b'{"message_id": "m1@kep.test"}'}
    manifest = (
        b'{"format": "%s", "message_id": "m1@kep.test", "members": [' % bundle.FORMAT.encode()
        + b", ".join(
            b'{"path": "%s", "size": %d, "sha256": "%s"}'
            % (path.encode(), len(body), hashlib.sha256(body).hexdigest().encode())
            for path, body in members.items()
        )
        + b"]}"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(bundle.MANIFEST, manifest)
        for path, body in members.items():
            zf.writestr(path, body)
    return out.getvalue()


def evidence_bundle(data: bytes) -> None:
    report = bundle.verify(data, [_signer().ca.cert], [])
    _check(not report.ok, "an unsigned bundle verified")
    _check(all(check.detail for check in report.checks), "a check without its reason")


def _rem_seeds() -> list[bytes]:
    original = b"From: ali.veli@kep.test\r\nSubject: asil\r\n\r\nMerhaba.\r\n"
    content = (
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\n'
        b"REM\r\n--m\r\nContent-Type: message/rfc822\r\nREM-Section-Type: rem_message/original\r\n\r\n"
        + original
        + b"\r\n--m\r\nContent-Type: application/xml\r\nREM-Section-Type: rem_message/xml_evidence\r\n"
        b"\r\n" + to_xml(_evidence()) + b"\r\n--m--\r\n"
    )
    digest = original_digest(content) or ""
    fields = (
        b"From: ali.veli@kep.test\r\nTo: ayse.kaya@kep.test\r\nMessage-ID: <d1@kep.test>\r\n"
        b"Subject: REM Dispatch: asil\r\n"
        b"REM-MessageType: http://uri.etsi.org/19522/v1#/ERDMessageType/dispatch\r\n"
        b"REM-MD08: ali.veli@kep.test\r\nREM-DigestAlgorithm: http://www.w3.org/2001/04/xmlenc#sha256\r\n"
        b"REM-DigestValue: " + digest.encode() + b"\r\n"
    )
    receipt_fields = (
        b"To: ali.veli@kep.test\r\nMessage-ID: <r1@kep.test>\r\nIn-Reply-To: <d1@kep.test>\r\n"
        b"REM-MessageType: http://uri.etsi.org/19522/v1#/ERDMessageType/receipt\r\n"
    )
    p7m = cms.sign(_signer().person, content=to_xml(_evidence()), detached=False).dump()
    receipt = (
        b'Content-Type: multipart/mixed; boundary="r"\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\n'
        b"receipt\r\n--r\r\nContent-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(p7m) + b"\r\n--r--\r\n"
    )
    return [_signed(fields, content), _signed(receipt_fields, receipt)]


def rem_message(data: bytes) -> None:
    path = _SCRATCH.write(data)
    read_rem_headers(path)
    try:
        read_rem(path, [_signer().ca.cert])
    except RemError as e:
        _check(e.reason in ("format", "signature", "certificate", "digest"), f"unknown reason {e.reason}")


TARGETS = {
    t.name: t
    for t in (
        Target("imap-command", imap_command, lambda: list(_IMAP_SEEDS), 4096),
        Target("imap-reader", imap_reader, lambda: [b"".join(_IMAP_SEEDS)], 8192),
        Target("imap-list", imap_list, lambda: [b"*%A.%x\nA.B.x", b"INBOX.%\nINBOX.Sent"], 256),
        Target("mime", mime_message, lambda: [_MIME_SEED], 16384),
        Target("headers", message_headers, lambda: [_MIME_SEED], 16384),
        Target("smtp-data", smtp_data, lambda: [b"\xff\x03\x05.x\r\n..y\r\nz\r\n.\r\nQUIT\r\n"], 4096),
        Target("smtp-address", smtp_address, lambda: list(_SMTP_ARGS), 512),
        Target("smime", smime, _smime_seeds, 16384),
        Target("cms", cms_der, _cms_seeds, 8192),
        Target("evidence-xml", evidence_xml, lambda: [to_xml(_evidence())], 16384),
        Target("bundle", evidence_bundle, lambda: [_bundle_seed()], 32768),
        Target("rem", rem_message, _rem_seeds, 32768),
    )
}


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--list", action="store_true", help="name the targets and stop")
    parser.add_argument("--target", choices=sorted(TARGETS))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--runs", type=int, help="stop after this many inputs")
    budget.add_argument("--seconds", type=int, help="stop after this many seconds")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds one input may take")
    parser.add_argument("--rss-mb", type=int, default=DEFAULT_RSS_MB, help="memory the process may use")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--corpus", type=Path, help="corpus folder (kept); a temporary one if not given")
    parser.add_argument("--artifacts", type=Path, default=Path.cwd(), help="where crashing inputs go")
    parser.add_argument("inputs", nargs="*", type=Path, help="run these saved inputs once and stop")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    opts = _options(argv)
    if opts.list:
        print("\n".join(sorted(TARGETS)))
        return
    if opts.target is None:
        raise SystemExit("--target is needed (see --list)")
    target = TARGETS[opts.target]
    flags = [
        f"-timeout={opts.timeout}",
        f"-rss_limit_mb={opts.rss_mb}",
        f"-max_len={target.max_len}",
        f"-seed={opts.seed}",
        f"-artifact_prefix={opts.artifacts}{os.sep}{target.name}-",
        "-print_final_stats=1",
    ]
    if opts.inputs:
        atheris.Setup([sys.argv[0], *flags, *map(str, opts.inputs)], target.run)
        atheris.Fuzz()
    corpus = opts.corpus or Path(tempfile.mkdtemp(prefix=f"kepmta-fuzz-{target.name}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in target.seeds():
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    if opts.runs is not None:
        flags.append(f"-runs={opts.runs}")
    if opts.seconds is not None:
        flags.append(f"-max_total_time={opts.seconds}")
    atheris.Setup([sys.argv[0], *flags, str(corpus)], target.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
