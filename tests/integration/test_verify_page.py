"""The Kanıt Doğrulama page (/dogrula) in a real browser: Debian's Chromium, headless, driven by
Selenium through chromium-driver. A receipt's evidence, the same evidence with one byte changed,
and a bundle are uploaded as a person would; the page's verdict and what it says are read back,
and a screenshot of each answer is saved in the test's folder."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from kepclient import DevServer, imap, kepmta, p7m, receipts, signed_by, submit, wait_for

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if CHROMIUM is None or DRIVER is None:
        # .ci/run installs chromium and chromium-driver: there the test must run.
        if os.environ.get("KEPMTA_REQUIRE_INTEROP"):
            pytest.fail("chromium and chromium-driver are not installed")
        pytest.skip("chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1100,1600",
    ):
        options.add_argument(flag)
    # The development certificate is issued by the folder's own CA, which Chromium does not know.
    options.accept_insecure_certs = True
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def upload(driver: webdriver.Chrome, file: Path) -> str:
    """Choose `file` in the form, send it, and return the verdict the page shows."""
    driver.find_element(By.ID, "file").send_keys(str(file))
    driver.find_element(By.ID, "verify").click()
    verdict = wait_for(lambda: driver.find_elements(By.ID, "verdict"), timeout=120)
    assert verdict, driver.page_source[-2000:]
    return str(verdict[0].text)


def receipt_evidence(srv: DevServer, subject: str) -> tuple[str, bytes]:
    """A message sent over SMTP: its provider id, and the evidence its sender's receipt carries."""
    to = [srv.account(1)["address"]]
    accepted = re.search(r"accepted as <([^>]+)>", submit(srv, 0, to, signed_by(srv, 0, to, subject)))
    assert accepted
    with imap(srv, srv.account(0)) as m:
        found = wait_for(lambda: receipts(m, subject, "SubmissionAcceptance"))
    assert found, "no SubmissionAcceptance receipt"
    return accepted.group(1), p7m(found[0], "SubmissionAcceptance")


def test_the_page_says_valid_or_not_and_why(
    srv: DevServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    subject = "dogrula-" + os.urandom(4).hex()
    _, evidence = receipt_evidence(srv, subject)
    valid = tmp_path / "SubmissionAcceptance.p7m"
    valid.write_bytes(evidence)
    # One byte of the signed XML changed: the subject it states.
    tampered = tmp_path / "tampered.p7m"
    at = evidence.index(subject.encode())
    tampered.write_bytes(evidence[:at] + b"D" + evidence[at + 1 :])
    page = f"https://localhost:{srv.ports['api']}/dogrula"

    browser.get(page)
    assert browser.title == "Kanıt Doğrulama"
    assert browser.find_elements(By.TAG_NAME, "script") == []  # plain HTML and CSS
    verdict = upload(browser, valid)
    browser.save_screenshot(str(tmp_path / "valid-tr.png"))
    assert verdict.startswith("GEÇERLİ"), verdict
    assert "ok" in (browser.find_element(By.ID, "verdict").get_attribute("class") or "").split()
    proves = browser.find_element(By.ID, "proves").text
    assert "Gönderim kabul edildi (SubmissionAcceptance, KEP 10)" in proves
    assert srv.account(0)["address"] in proves and srv.account(1)["address"] in proves
    assert subject in proves and re.search(r"[0-9a-f]{64}", proves)
    assert "kepmta development KEP provider kep.test (kep.test)" in proves

    # The English switch, then the tampered file: not valid, and the failing check named.
    browser.find_element(By.LINK_TEXT, "English").click()
    assert browser.title == "Evidence verification"
    verdict = upload(browser, tampered)
    browser.save_screenshot(str(tmp_path / "tampered-en.png"))
    assert verdict.startswith("NOT VALID"), verdict
    assert "bad" in (browser.find_element(By.ID, "verdict").get_attribute("class") or "").split()
    failed = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "li.fail")]
    assert any(f.startswith("Signature (failed)") and "message-digest" in f for f in failed), failed
    assert (tmp_path / "valid-tr.png").stat().st_size > 10_000
    assert (tmp_path / "tampered-en.png").stat().st_size > 10_000

    # Nothing uploaded was kept anywhere in the provider's folder.
    kept = [p for p in srv.data.rglob("*") if p.is_file() and tampered.read_bytes() in p.read_bytes()]
    assert kept == []


def test_the_page_checks_a_bundle(srv: DevServer, browser: webdriver.Chrome, tmp_path: Path) -> None:
    subject = "dogrula-zip-" + os.urandom(4).hex()
    message_id, _ = receipt_evidence(srv, subject)
    bundle = tmp_path / "kanit.zip"
    r = kepmta("evidence", "export", message_id, "-o", str(bundle), "--data", str(srv.data))
    assert r.returncode == 0, r.stderr
    browser.get(f"https://localhost:{srv.ports['api']}/dogrula?lang=en")
    verdict = upload(browser, bundle)
    browser.save_screenshot(str(tmp_path / "bundle-en.png"))
    assert verdict.startswith("VALID"), verdict
    items = browser.find_element(By.TAG_NAME, "body").text
    assert "Submission accepted (SubmissionAcceptance, KEP 10)" in items
