"""A printable evidence report of one message, in Turkish and English, as a PDF a lawyer can file.

It states the message, its parties and the SHA-256 of the original, every event with its time and
KEP code, and the result of verifying each evidence offline (signature, chain, time-stamp, ledger).
The report itself proves nothing: the signed evidence does, and the report says how to check it.
Fonts are embedded (DejaVu, which covers the Turkish letters), so the PDF prints the same anywhere.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

from kepmta.evidence.timeline import EVENT_NAMES_EN, EVENT_NAMES_TR, Checked, MessageEvidence, record_ok

# Debian's fonts-dejavu-core; other systems put the same files in one of these.
FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/share/fonts/TTF"),
    Path("/usr/local/share/fonts"),
)
_FONTS = {
    ("Sans", ""): "DejaVuSans.ttf",
    ("Sans", "B"): "DejaVuSans-Bold.ttf",
    ("Sans", "I"): "DejaVuSans-Oblique.ttf",
    ("Mono", ""): "DejaVuSansMono.ttf",
}
_INK = (33, 37, 41)
_MUTED = (108, 117, 125)
_ACCENT = (25, 65, 120)
_RULE = (206, 212, 218)
_BAND = (241, 244, 248)
_GOOD = (25, 120, 60)
_BAD = (176, 32, 32)


# The verifier's check names (kepmta.evidence.verify.CHECK_NAMES) in Turkish.
_CHECK_NAMES_TR = {
    "structure": "yapı",
    "signature": "imza",
    "signing-certificate-v2": "imzacı sertifikası",
    "chain": "sertifika zinciri",
    "time-stamp": "zaman damgası",
    "content": "içerik",
    "archive-time-stamp": "arşiv zaman damgası",
    "revocation": "iptal durumu",
}


class FontMissing(LookupError):
    """The DejaVu fonts needed for Turkish text are not installed."""


def find_fonts(dirs: Sequence[Path] = FONT_DIRS) -> dict[tuple[str, str], Path]:
    for folder in dirs:
        found = {key: folder / name for key, name in _FONTS.items()}
        if all(p.is_file() for p in found.values()):
            return found
    raise FontMissing(
        "the PDF report needs the DejaVu fonts (Debian: apt-get install fonts-dejavu-core); "
        f"looked in {', '.join(str(d) for d in dirs)}"
    )


def _utc(value: dt.datetime) -> str:
    return f"{value.astimezone(dt.UTC):%d.%m.%Y %H:%M:%S} UTC"


class _Pdf(FPDF):
    def __init__(self, message_id: str, generated: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self._message_id = message_id
        self._generated = generated

    def footer(self) -> None:
        self.set_y(-14)
        self.set_draw_color(*_RULE)
        self.line(self.l_margin, self.get_y(), self.w - self.r_margin, self.get_y())
        self.set_font("Sans", "", 7.5)
        self.set_text_color(*_MUTED)
        self.cell(0, 6, f"<{self._message_id}>  ·  {self._generated}", align="L")
        self.set_x(self.l_margin)
        self.cell(0, 6, f"Sayfa / Page {self.page_no()} / {{nb}}", align="R")


def render(
    message: MessageEvidence,
    checked: Sequence[Checked],
    *,
    provider_name: str,
    provider_domain: str,
    generated_at: dt.datetime | None = None,
    fonts: dict[tuple[str, str], Path] | None = None,
) -> bytes:
    """The report as PDF bytes; `checked` is `timeline.check(message, …)`."""
    generated = _utc(generated_at or dt.datetime.now(dt.UTC))
    pdf = _Pdf(message.message_id, f"Oluşturma / Generated {generated}")
    for (family, style), path in (fonts or find_fonts()).items():
        pdf.add_font(family, style, str(path))
    pdf.set_margins(18, 16, 18)
    pdf.set_auto_page_break(True, margin=20)
    pdf.set_title(f"KEP Kanıt Raporu – {message.subject}")
    pdf.set_author(provider_name)
    pdf.set_subject(f"KEP evidence report for <{message.message_id}>")
    pdf.set_creator("kepmta")
    pdf.add_page()
    _header(pdf, provider_name, provider_domain, generated)
    _verdict(pdf, checked)
    _section(pdf, "İleti", "Message")
    _facts(pdf, message)
    _section(pdf, "Olaylar", "Events")
    _events(pdf, message, checked)
    _section(pdf, "Kanıtların doğrulanması", "Verification of the evidence")
    _checks(pdf, checked)
    _section(pdf, "Nasıl doğrulanır", "How to verify")
    _howto(pdf, message)
    return bytes(pdf.output())


def _header(pdf: _Pdf, provider_name: str, provider_domain: str, generated: str) -> None:
    pdf.set_fill_color(*_ACCENT)
    pdf.rect(0, 0, pdf.w, 5, style="F")
    pdf.set_y(14)
    pdf.set_font("Sans", "B", 20)
    pdf.set_text_color(*_ACCENT)
    pdf.cell(0, 10, "KEP Kanıt Raporu", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Sans", "I", 12)
    pdf.set_text_color(*_MUTED)
    pdf.cell(0, 7, "Registered e-mail (KEP) evidence report", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    pdf.set_font("Sans", "", 8.5)
    pdf.set_text_color(*_INK)
    pdf.cell(0, 4.5, f"{provider_name} ({provider_domain})", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*_MUTED)
    pdf.cell(0, 4.5, f"Rapor zamanı / Report time: {generated}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)


def _verdict(pdf: _Pdf, checked: Sequence[Checked]) -> None:
    ok = bool(checked) and all(c.ok for c in checked)
    colour = _GOOD if ok else _BAD
    if not checked:
        tr, en = "Bu ileti için henüz kanıt yok.", "No evidence has been recorded for this message yet."
    elif ok:
        tr = (
            f"Tüm kanıtlar ({len(checked)}) geçerli: imza, sertifika zinciri, zaman damgası ve "
            "defter kaydı doğrulandı."
        )
        en = f"All {len(checked)} evidence are valid: signature, certificate chain, time-stamp and ledger."
    else:
        bad = sum(not c.ok for c in checked)
        tr = f"DİKKAT: {len(checked)} kanıttan {bad} tanesi doğrulanamadı."
        en = f"WARNING: {bad} of {len(checked)} evidence did not verify."
    y = pdf.get_y()
    pdf.set_fill_color(*colour)
    pdf.rect(pdf.l_margin, y, 2.2, 15, style="F")
    pdf.set_xy(pdf.l_margin + 5, y + 1)
    pdf.set_font("Sans", "B", 10.5)
    pdf.set_text_color(*colour)
    pdf.cell(
        0, 6, ("GEÇERLİ / VALID" if ok else "GEÇERSİZ / NOT VALID") if checked else "KANIT YOK / NO EVIDENCE"
    )
    pdf.set_xy(pdf.l_margin + 5, y + 7)
    pdf.set_font("Sans", "", 8.5)
    pdf.set_text_color(*_INK)
    pdf.multi_cell(pdf.epw - 5, 4, f"{tr}\n{en}", align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_y(max(pdf.get_y(), y + 15))
    pdf.ln(3)


def _section(pdf: _Pdf, turkish: str, english: str) -> None:
    if pdf.get_y() > pdf.h - 50:
        pdf.add_page()
    pdf.ln(3)
    pdf.set_font("Sans", "B", 12)
    pdf.set_text_color(*_ACCENT)
    pdf.cell(pdf.get_string_width(turkish) + 2, 7, turkish)
    pdf.set_font("Sans", "I", 10)
    pdf.set_text_color(*_MUTED)
    pdf.cell(0, 7, f"/ {english}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(*_RULE)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
    pdf.ln(2.5)


def _plain(pdf: _Pdf) -> None:
    """Regular text on white: table cells inherit the current font style and fill colour."""
    pdf.set_font("Sans", "", 8.5)
    pdf.set_text_color(*_INK)
    pdf.set_fill_color(255, 255, 255)
    pdf.set_draw_color(*_RULE)


def _label(tr: str, en: str) -> str:
    return f"{tr}\n{en}"


def _facts(pdf: _Pdf, message: MessageEvidence) -> None:
    rows = [
        (_label("Konu", "Subject"), message.subject or "-", "Sans"),
        (_label("Gönderen", "Sender"), message.sender, "Sans"),
    ]
    if message.operator:
        rows.append((_label("İşlem yetkilisi", "Operator"), message.operator, "Sans"))
    rows.append(
        (
            _label("Alıcılar", "Recipients"),
            "\n".join(f"{i}. {r}" for i, r in enumerate(message.recipients, 1)) or "-",
            "Sans",
        )
    )
    rows += [
        (_label("Gönderim zamanı", "Submitted"), _utc(message.submitted_at), "Sans"),
        (_label("KEP ileti kimliği", "Provider message id"), f"<{message.message_id}>", "Mono"),
        (
            _label("Kullanıcı ileti kimliği", "User agent Message-ID"),
            f"<{message.ua_message_id}>" if message.ua_message_id else "-",
            "Mono",
        ),
        (
            _label("Özgün iletinin özeti", "SHA-256 of the original"),
            _grouped(message.digest.hex()) if message.digest else "-",
            "Mono",
        ),
    ]
    _plain(pdf)
    with pdf.table(
        col_widths=(32, 100),
        first_row_as_headings=False,
        borders_layout="HORIZONTAL_LINES",
        line_height=4.3,
        padding=(1.2, 1.5),
        text_align=("LEFT", "LEFT"),
    ) as table:
        for label, value, family in rows:
            row = table.row()
            row.cell(label, style=FontFace(family="Sans", emphasis="B", size_pt=8, color=_MUTED))
            row.cell(value, style=FontFace(family=family, size_pt=8.5 if family == "Sans" else 8, color=_INK))


def _grouped(hex_digest: str) -> str:
    """The digest in groups of eight, two lines, so a person can compare it by eye."""
    groups = [hex_digest[i : i + 8] for i in range(0, len(hex_digest), 8)]
    return " ".join(groups[:4]) + "\n" + " ".join(groups[4:])


def _events(pdf: _Pdf, message: MessageEvidence, checked: Sequence[Checked]) -> None:
    if not message.entries:
        pdf.set_font("Sans", "", 9)
        pdf.cell(0, 6, "Kanıt yok. / No evidence.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        return
    results = {c.entry.seq: c for c in checked}
    _plain(pdf)
    head = FontFace(family="Sans", emphasis="B", size_pt=7.5, color=_ACCENT, fill_color=_BAND)
    with pdf.table(
        col_widths=(25, 11, 62, 44, 20),
        headings_style=head,
        borders_layout="HORIZONTAL_LINES",
        cell_fill_color=(250, 251, 253),
        cell_fill_mode="ROWS",
        line_height=3.9,
        padding=(1.3, 1.2),
        text_align=("LEFT", "CENTER", "LEFT", "LEFT", "CENTER"),
    ) as table:
        heading = table.row()
        for text in (
            "Zaman (UTC)\nTime (UTC)",
            "Kod\nCode",
            "Olay\nEvent",
            "Alıcı\nRecipient",
            "Doğrulama\nVerified",
        ):
            heading.cell(text)
        for entry in message.entries:
            ev = entry.evidence
            when = ev.event_time.astimezone(dt.UTC)
            row = table.row()
            row.cell(
                f"{when:%d.%m.%Y}\n{when:%H:%M:%S}", style=FontFace(family="Sans", size_pt=8, color=_INK)
            )
            row.cell(
                str(ev.event.ptt_code), style=FontFace(family="Sans", emphasis="B", size_pt=9, color=_INK)
            )
            reason = f"{ev.reason.value}: {ev.details}"
            row.cell(
                f"{EVENT_NAMES_TR[ev.event]}\n{EVENT_NAMES_EN[ev.event]}\n{ev.event.value} · {reason}",
                style=FontFace(family="Sans", size_pt=7.5, color=_INK),
            )
            row.cell(
                ev.recipient.address if ev.recipient else "—",
                style=FontFace(family="Sans", size_pt=7.5, color=_INK),
            )
            result = results.get(entry.seq)
            good = result is not None and result.ok
            row.cell(
                "✓ geçerli\nvalid" if good else "✗ GEÇERSİZ\nNOT VALID",
                style=FontFace(family="Sans", emphasis="B", size_pt=7.5, color=_GOOD if good else _BAD),
            )


def _checks(pdf: _Pdf, checked: Sequence[Checked]) -> None:
    for c in checked:
        ev = c.entry.evidence
        if pdf.get_y() > pdf.h - 75:
            pdf.add_page()
        pdf.set_font("Sans", "B", 9)
        pdf.set_text_color(*(_GOOD if c.ok else _BAD))
        mark = "✓" if c.ok else "✗"
        pdf.cell(
            0, 5.5, f"{mark} {ev.event.value} ({ev.event.ptt_code})", new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )
        report = c.report
        rows = [
            ("Kanıt kimliği / Evidence id", ev.evidence_id),
            (
                "Düzenleyen / Issued by",
                c.entry.issuer + (" · karşı hizmet sağlayıcısı / peer provider" if c.entry.received else ""),
            ),
            ("İmzalayan / Signed by", report.signer_subject or "-"),
            (
                "Zaman damgası / Time-stamp",
                _utc(report.timestamp_time) if report.timestamp_time else "-",
            ),
            (
                "Defter / Ledger",
                f"seq {c.entry.seq} · hash {c.entry.record.hash.hex()[:32]}… "
                + ("✓" if record_ok(c.entry.record) else "✗ kayıt özeti tutmuyor / record hash mismatch"),
            ),
        ]
        rows += [
            (f"{'✓' if x.ok else '✗'} {_CHECK_NAMES_TR.get(x.name, x.name)} / {x.name}", x.detail)
            for x in report.checks
        ]
        _plain(pdf)
        with pdf.table(
            col_widths=(50, 112),
            first_row_as_headings=False,
            borders_layout="NONE",
            line_height=3.6,
            padding=(0.5, 1.2),
            text_align=("LEFT", "LEFT"),
        ) as table:
            for label, value in rows:
                failed = label.startswith("✗")
                row = table.row()
                row.cell(label, style=FontFace(family="Sans", size_pt=7, color=_BAD if failed else _MUTED))
                row.cell(value, style=FontFace(family="Sans", size_pt=7, color=_BAD if failed else _INK))
        pdf.ln(2.5)


def _howto(pdf: _Pdf, message: MessageEvidence) -> None:
    pdf.set_font("Sans", "", 8.5)
    pdf.set_text_color(*_INK)
    pdf.multi_cell(
        0,
        4.2,
        "Bu rapor bir özettir; hukuki delil, imzalı ve zaman damgalı kanıt dosyalarıdır (.p7m). "
        "Tüm kanıtlar, sertifikalar ve defter kayıtları tek bir pakette dışa aktarılır ve kepmta "
        "olmadan, yalnızca OpenSSL ile doğrulanabilir:\n"
        "This report is a summary; the legal proof is the signed, time-stamped evidence files (.p7m). "
        "All evidence, certificates and ledger records are exported in one bundle that can be checked "
        "without kepmta, with OpenSSL alone:",
        align="L",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.ln(1.5)
    pdf.set_font("Mono", "", 7.5)
    pdf.set_fill_color(*_BAND)
    commands = (
        f"kepmta evidence export '<{message.message_id}>' -o kanit.zip\n"
        "kepmta evidence verify kanit.zip --ca provider-ca.pem\n"
        "openssl cms -verify -inform DER -in evidence/NAME.p7m -CAfile certs/provider-ca.pem"
    )
    pdf.multi_cell(0, 4, commands, fill=True, padding=2, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
