"""Kanıt Doğrulama: `/dogrula`, where anyone holding a KEP evidence checks it, without an account.

Turkish, with an English switch (`?lang=en`); plain HTML and CSS, a form and its answer, no
JavaScript. The file is checked by the verifier `kepmta evidence verify` uses (an evidence `.p7m`,
with its `.ers` when it was renewed, or a bundle `.zip`), against this provider's CAs and those of
the peer providers it has registered; the page says whether it is valid, what it proves, and for
each check that fails, why. Nothing uploaded is kept: the file is read into memory, checked and
dropped, and the multipart parser's own spill file (past 1 MB) is an unnamed temporary file.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.datastructures import UploadFile

from kepmta.api.ratelimit import Buckets
from kepmta.config import ApiPolicy
from kepmta.evidence import archive, bundle
from kepmta.evidence.archive import ArchiveError
from kepmta.evidence.timeline import EVENT_NAMES_EN, EVENT_NAMES_TR
from kepmta.evidence.verify import Report, verify_evidence
from kepmta.ratelimit import client_key

PATH = "/dogrula"
# Room for the multipart framing and the field names around the file itself.
_FORM_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class Trust:
    """What evidence is checked against: provider CAs and time-stamp authority CAs."""

    provider: Sequence[x509.Certificate]
    tsa: Sequence[x509.Certificate]
    weak: Mapping[str, dt.datetime]


_TEXT = {
    "tr": {
        "title": "Kanıt Doğrulama",
        "intro": "KEP kanıtınızı (.p7m), yenilenmiş kanıtın kayıt dosyasını (.ers) ya da kanıt "
        "paketini (.zip) seçin. Dosya yalnızca denetlenir, saklanmaz. Hesap gerekmez.",
        "file": "Kanıt dosyası (.p7m veya .zip)",
        "ers": "Kanıt kaydı (.ers), yalnızca yenilenmiş bir kanıt için",
        "submit": "Doğrula",
        "other": "English",
        "valid": "GEÇERLİ: bu kanıt bozulmamış ve {provider} tarafından imzalanmış.",
        "valid_bundle": "GEÇERLİ: paketteki her kanıt ve paketin kendisi bozulmamış.",
        "invalid": "GEÇERSİZ: bu dosya geçerli bir kanıt değil. Nedeni aşağıda.",
        "proves": "Bu kanıt neyi kanıtlar",
        "claims": "Dosyanın söyledikleri (doğrulanamadığı için kanıt değildir)",
        "checks": "Denetimler",
        "event": "Olay",
        "reason": "Gerekçe",
        "sender": "Gönderen",
        "operator": "İşlem yetkilisi",
        "recipients": "Alıcılar",
        "this_one": "bu kanıtın konusu",
        "subject": "Konu",
        "message_id": "İleti kimliği",
        "event_time": "Olay zamanı",
        "submitted": "Gönderim zamanı",
        "stamped": "Zaman damgası",
        "digest": "İletinin SHA-256 özeti",
        "issuer": "Kanıtı imzalayan hizmet sağlayıcı",
        "signer": "İmzalayan sertifika",
        "evidence_id": "Kanıt kimliği",
        "none": "yok",
        "unknown": "bilinmiyor",
        "bundle": "Kanıt paketi: ileti {message_id}",
        "bundle_items": "Paketteki kanıtlar",
        "no_file": "Bir dosya seçin.",
        "too_big": "Dosya çok büyük: en çok {limit} bayt.",
        "only_ers": "Bu bir kanıt kaydı (.ers): tek başına bir şey kanıtlamaz. Kanıtın .p7m "
        "dosyasını ilk alana, bu .ers dosyasını ikinci alana koyup yeniden deneyin.",
        "slow_down": "Çok fazla istek: {seconds} saniye sonra yeniden deneyin.",
        "ok": "geçti",
        "failed": "başarısız",
    },
    "en": {
        "title": "Evidence verification",
        "intro": "Choose your KEP evidence (.p7m), the record of a renewed evidence (.ers) or an "
        "evidence bundle (.zip). The file is only checked, never kept. No account needed.",
        "file": "Evidence file (.p7m or .zip)",
        "ers": "Evidence record (.ers), only for a renewed evidence",
        "submit": "Verify",
        "other": "Türkçe",
        "valid": "VALID: this evidence is intact and signed by {provider}.",
        "valid_bundle": "VALID: every evidence in the bundle, and the bundle itself, is intact.",
        "invalid": "NOT VALID: this file is not a valid evidence. See why below.",
        "proves": "What this evidence proves",
        "claims": "What the file says (not proof, since it does not verify)",
        "checks": "Checks",
        "event": "Event",
        "reason": "Reason",
        "sender": "Sender",
        "operator": "Operator",
        "recipients": "Recipients",
        "this_one": "what this evidence is about",
        "subject": "Subject",
        "message_id": "Message id",
        "event_time": "Event time",
        "submitted": "Submitted",
        "stamped": "Time-stamp",
        "digest": "SHA-256 digest of the message",
        "issuer": "Provider that signed the evidence",
        "signer": "Signing certificate",
        "evidence_id": "Evidence id",
        "none": "none",
        "unknown": "unknown",
        "bundle": "Evidence bundle: message {message_id}",
        "bundle_items": "Evidence in the bundle",
        "no_file": "Choose a file.",
        "too_big": "The file is too large: at most {limit} bytes.",
        "only_ers": "This is an evidence record (.ers): alone it proves nothing. Put the "
        "evidence's .p7m file in the first field and this .ers file in the second, and try again.",
        "slow_down": "Too many requests: try again in {seconds} seconds.",
        "ok": "passed",
        "failed": "failed",
    },
}

_CHECKS = {
    "structure": ("Dosya yapısı", "File structure"),
    "signature": ("İmza", "Signature"),
    "signing-certificate-v2": ("İmzalayan sertifika bağı", "Signing certificate reference"),
    "chain": ("Sertifika zinciri", "Certificate chain"),
    "time-stamp": ("Zaman damgası", "Time-stamp"),
    "content": ("Kanıt içeriği", "Evidence content"),
    "archive-time-stamp": ("Arşiv zaman damgası (.ers)", "Archive time-stamp (.ers)"),
    "revocation": ("İptal durumu", "Revocation status"),
    "zip": ("ZIP dosyası", "ZIP file"),
    "manifest": ("İçerik listesi", "Manifest"),
    "manifest-signature": ("İçerik listesinin imzası", "Manifest signature"),
    "checksums": ("Özet değerleri", "Checksums"),
    "message": ("İleti bilgileri", "Message facts"),
    "ledger": ("Kanıt defteri kayıtları", "Ledger records"),
}

_STYLE = """
body{font-family:"DejaVu Sans",Arial,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;
color:#1b1b1b;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.3rem}h2{font-size:1.2rem;margin-top:1.6rem}
nav{float:right}form{border:1px solid #bbb;padding:1rem;border-radius:.4rem;background:#f7f7f7}
label{display:block;margin:.5rem 0 .2rem;font-weight:bold}
button{margin-top:1rem;padding:.4rem 1.2rem;font-size:1rem}
.verdict{padding:.8rem 1rem;border-radius:.4rem;font-weight:bold;font-size:1.1rem}
.ok{background:#dff3e1;border:2px solid #2e7d32}.bad{background:#fde2e1;border:2px solid #c62828}
.note{background:#fff6d6;border:2px solid #b58900}
table{border-collapse:collapse;width:100%}th,td{text-align:left;vertical-align:top;
padding:.3rem .5rem;border-bottom:1px solid #ddd}th{width:30%}
li.pass::marker{content:"✓ ";color:#2e7d32}li.fail::marker{content:"✗ ";color:#c62828}
code{word-break:break-all}
"""


def _lang(request: Request) -> str:
    return "en" if request.query_params.get("lang") == "en" else "tr"


def _when(value: dt.datetime | None, t: Mapping[str, str]) -> str:
    return t["unknown"] if value is None else f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def _e(value: object) -> str:
    return html.escape(str(value))


def _page(lang: str, body: str, status: int = 200) -> HTMLResponse:
    t = _TEXT[lang]
    other = "tr" if lang == "en" else "en"
    form = (
        f'<form method="post" action="{PATH}?lang={lang}" enctype="multipart/form-data">'
        f'<label for="file">{_e(t["file"])}</label>'
        '<input type="file" id="file" name="file" accept=".p7m,.ers,.zip,.pem" required>'
        f'<label for="ers">{_e(t["ers"])}</label>'
        '<input type="file" id="ers" name="ers" accept=".ers">'
        f'<div><button type="submit" id="verify">{_e(t["submit"])}</button></div></form>'
    )
    text = (
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(t['title'])}</title><style>{_STYLE}</style></head><body>"
        f'<nav><a href="{PATH}?lang={other}" lang="{other}">{_e(t["other"])}</a></nav>'
        f"<h1>{_e(t['title'])}</h1><p>{_e(t['intro'])}</p>{form}{body}</body></html>"
    )
    return HTMLResponse(text, status_code=status)


def _notice(lang: str, key: str, status: int, **values: object) -> HTMLResponse:
    message = _TEXT[lang][key].format(**values)
    return _page(lang, f'<p id="verdict" class="verdict note">{_e(message)}</p>', status)


def _check_list(checks: Sequence[tuple[str, bool, str]], lang: str) -> str:
    t = _TEXT[lang]
    items = []
    for name, ok, detail in checks:
        label = _CHECKS.get(name, (name, name))[0 if lang == "tr" else 1]
        state = t["ok"] if ok else t["failed"]
        mark = "pass" if ok else "fail"
        items.append(f'<li class="{mark}"><strong>{_e(label)}</strong> ({state}): {_e(detail)}</li>')
    return f'<ul class="checks">{"".join(items)}</ul>'


def _proves(report: Report, lang: str) -> str:
    t = _TEXT[lang]
    ev = report.evidence
    if ev is None:
        return ""
    names = EVENT_NAMES_TR if lang == "tr" else EVENT_NAMES_EN

    def who(name: str | None, address: str) -> str:
        return f"{name} <{address}>" if name else address

    this_one = f" ← {_e(t['this_one'])}"
    recipients = "".join(
        f"<li>{_e(who(r.name, r.address))}{this_one if i == ev.refers_to_recipient else ''}</li>"
        for i, r in enumerate(ev.recipients, 1)
    )
    rows = [
        (t["event"], f"{names[ev.event]} ({ev.event.value}, KEP {ev.event.ptt_code})"),
        (t["reason"], f"{ev.reason.value}: {ev.details}"),
        (t["sender"], who(ev.sender.name, ev.sender.address)),
    ]
    if ev.operator is not None:
        rows.append((t["operator"], who(ev.operator.name, ev.operator.address)))
    cells = [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows]
    cells.append(f"<tr><th>{_e(t['recipients'])}</th><td><ul>{recipients}</ul></td></tr>")
    more = [
        (t["subject"], ev.subject),
        (t["message_id"], ev.message_id),
        (t["event_time"], _when(ev.event_time, t)),
        (t["submitted"], _when(ev.submission_time, t)),
        (t["stamped"], _when(report.timestamp_time, t)),
        (t["digest"], ev.digest_sha256.hex() if ev.digest_sha256 is not None else t["none"]),
        (t["issuer"], f"{ev.issuer_name} ({ev.issuer_domain})"),
        (t["signer"], report.signer_subject or t["unknown"]),
        (t["evidence_id"], ev.evidence_id),
    ]
    cells += [f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in more]
    heading = t["proves"] if report.ok else t["claims"]
    return f'<h2>{_e(heading)}</h2><table id="proves">{"".join(cells)}</table>'


def _evidence_answer(report: Report, lang: str) -> str:
    t = _TEXT[lang]
    if report.ok and report.evidence is not None:
        provider = f"{report.evidence.issuer_name} ({report.evidence.issuer_domain})"
        verdict = f'<p id="verdict" class="verdict ok">{_e(t["valid"].format(provider=provider))}</p>'
    else:
        verdict = f'<p id="verdict" class="verdict bad">{_e(t["invalid"])}</p>'
    checks = [(c.name, c.ok, c.detail) for c in report.checks]
    return f"{verdict}{_proves(report, lang)}<h2>{_e(t['checks'])}</h2>{_check_list(checks, lang)}"


def _bundle_answer(report: bundle.BundleReport, lang: str) -> str:
    t = _TEXT[lang]
    names = EVENT_NAMES_TR if lang == "tr" else EVENT_NAMES_EN
    verdict = (
        f'<p id="verdict" class="verdict ok">{_e(t["valid_bundle"])}</p>'
        if report.ok
        else f'<p id="verdict" class="verdict bad">{_e(t["invalid"])}</p>'
    )
    heading = t["bundle"].format(message_id=report.message_id or t["unknown"])
    items = []
    for path, r in report.evidence:
        ev = r.evidence
        what = (
            f"{names[ev.event]} ({ev.event.value}, KEP {ev.event.ptt_code}), {_when(ev.event_time, t)}, "
            f"{ev.issuer_name} ({ev.issuer_domain})"
            if ev is not None
            else t["unknown"]
        )
        failed = (
            _check_list([(c.name, c.ok, c.detail) for c in r.checks if not c.ok], lang) if not r.ok else ""
        )
        items.append(
            f'<li class="{"pass" if r.ok else "fail"}"><code>{_e(path)}</code>: {_e(what)}{failed}</li>'
        )
    checks = [(c.name, c.ok, c.detail) for c in report.checks]
    return (
        f"{verdict}<h2>{_e(heading)}</h2>{_check_list(checks, lang)}"
        f'<h2>{_e(t["bundle_items"])}</h2><ul class="checks">{"".join(items)}</ul>'
    )


def _der(data: bytes) -> bytes:
    """DER as it is, or the DER inside a PEM block (as `kepmta evidence verify` reads either)."""
    pem = re.search(rb"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END", data, re.S)
    return base64.b64decode(pem.group(1)) if pem else data


def _is_record(der: bytes) -> bool:
    try:
        archive.parse(der)
    except (ArchiveError, ValueError):
        return False
    return True


class VerifyPage:
    def __init__(self, trust: Callable[[], Trust], policy: ApiPolicy) -> None:
        self.trust = trust
        self.limit = policy.verify_max_size
        self.buckets = Buckets(policy.burst, policy.requests_per_minute)

    def route(self, app: FastAPI) -> None:
        app.add_api_route(PATH, self.form, methods=["GET"], include_in_schema=False)
        app.add_api_route(PATH, self.verify, methods=["POST"], include_in_schema=False)

    async def form(self, request: Request) -> HTMLResponse:
        return _page(_lang(request), "")

    async def verify(self, request: Request) -> HTMLResponse:
        lang = _lang(request)
        wait = self.buckets.take(client_key(request.client.host if request.client else ""))
        if wait is not None:
            return _notice(lang, "slow_down", 429, seconds=math.ceil(wait))
        length = request.headers.get("content-length", "")
        # Browsers always declare the length of a form; one that does not, or too much, is
        # refused before anything is read.
        if not length.isdigit() or int(length) > self.limit + _FORM_OVERHEAD:
            return _notice(lang, "too_big", 413, limit=self.limit)
        form = await request.form(max_files=2, max_fields=2)
        try:
            main, ers = form.get("file"), form.get("ers")
            data = await main.read() if isinstance(main, UploadFile) else b""
            record = await ers.read() if isinstance(ers, UploadFile) else b""
        finally:
            await form.close()
        if not data:
            return _notice(lang, "no_file", 400)
        if len(data) + len(record) > self.limit:
            return _notice(lang, "too_big", 413, limit=self.limit)
        trust = self.trust()
        if data.startswith(b"PK\x03\x04"):
            result = await asyncio.to_thread(bundle.verify, data, trust.provider, trust.tsa, trust.weak)
            return _page(lang, _bundle_answer(result, lang))
        der = _der(data)
        if _is_record(der):
            return _notice(lang, "only_ers", 400)
        report = await asyncio.to_thread(
            verify_evidence,
            der,
            trust.provider,
            trust.tsa,
            evidence_record=_der(record) if record else None,
            weak=trust.weak,
        )
        return _page(lang, _evidence_answer(report, lang))
