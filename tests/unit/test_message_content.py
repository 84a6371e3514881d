"""Content-Type and Content-Disposition parameters (kepmta.message.content), RFC 2231 included."""

from __future__ import annotations

from kepmta.message.content import TEXT_PLAIN, ContentType, parse_content_type, parse_disposition


def test_content_type_parameters_are_kept_as_written() -> None:
    default = ContentType("text", "plain", ())
    ct = parse_content_type(
        'Text/HTML ; charset="utf-8" (comment); name*=UTF-8\'\'%C3%A7.txt; x="a\\"b"', default
    )
    assert (ct.maintype, ct.subtype, ct.mime_type) == ("text", "html", "text/html")
    # BODYSTRUCTURE reports them so (RFC 3501 §7.4.2).
    assert ct.params == (("charset", "utf-8"), ("name*", "UTF-8''%C3%A7.txt"), ("x", 'a"b'))
    assert ct.param("NAME") == "ç.txt" and ct.param("X") == 'a"b' and ct.param("none") is None
    assert parse_content_type("garbage", default) == default
    assert parse_content_type(None) == TEXT_PLAIN


def test_rfc2231_continuations_and_charsets() -> None:
    ct = parse_content_type(
        "application/pdf; name=fallback.pdf; name*0*=iso-8859-9''%FD; name*1=ki.pdf; name*2*=%20x"
    )
    # RFC 2231 §3, §4: sections joined in order, the encoded ones %-decoded, the charset applied;
    # the RFC 2231 form wins over the plain one written for older readers.
    assert ct.param("name") == "ıki.pdf x"
    assert parse_content_type("a/b; n*0=one; n*2=three").param("n") == "one"  # a gap ends them
    assert parse_content_type("a/b; n*=x-unknown''%C3%A7").param("n") == "ç"
    assert parse_content_type("a/b; n*=%41").param("n") == "A"


def test_boundary() -> None:
    assert parse_content_type('multipart/mixed; boundary="b c "').boundary == "b c"
    assert parse_content_type("multipart/mixed; boundary=").boundary is None
    assert parse_content_type("multipart/mixed").boundary is None


def test_disposition() -> None:
    assert parse_disposition(' attachment; filename="a b.pdf"') == ("attachment", (("filename", "a b.pdf"),))
    assert parse_disposition(";") is None
