"""Signing evidence: EN 319 522-3 XML inside an attached CAdES-B-T CMS SignedData.

We differ from the EN 319 522-3 baseline (an enveloped XAdES signature) on purpose: the XML is the
content of a CMS signature with a signature time-stamp, which OpenSSL verifies with no options.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from kepmta import metrics
from kepmta.evidence.errors import TokenImprintError
from kepmta.evidence.model import Evidence
from kepmta.evidence.tsa import TimeStamper, imprint_of
from kepmta.evidence.xml import to_xml
from kepmta.pki import KeyPair
from kepmta.smime import cms


@dataclass(frozen=True)
class SignedEvidence:
    evidence: Evidence
    xml: bytes
    der: bytes  # ContentInfo: attached SignedData, CAdES-B-T, the XML as content
    # Whether `der` carries its signature time-stamp (CAdES-B-T), as known when it was made:
    # reading it back out of the DER at each commit cost more than the rest of the commit.
    stamped: bool

    @property
    def filename(self) -> str:
        """`<EventName>.p7m`, the name the evidence travels under (EVIDENCE.md)."""
        return f"{self.evidence.event.value}.p7m"


class EvidenceSigner:
    """Signs evidence with the provider's transaction certificate and time-stamps the signature."""

    def __init__(self, pair: KeyPair, chain: Sequence[x509.Certificate], tsa: TimeStamper) -> None:
        self._pair = pair
        self._chain = tuple(chain)
        self._tsa = tsa

    @property
    def tsa(self) -> TimeStamper:
        return self._tsa

    async def sign(self, ev: Evidence) -> SignedEvidence:
        """CAdES-B-T evidence; raises a TimeStampError if the TSA gives no usable token."""
        return await self.stamp(await self.sign_basic(ev))

    async def sign_basic(self, ev: Evidence) -> SignedEvidence:
        """CAdES-B-B evidence: signed, not yet time-stamped."""
        xml = to_xml(ev)
        return SignedEvidence(evidence=ev, xml=xml, der=await self._sign(xml), stamped=False)

    async def sign_statement(self, content: bytes) -> bytes:
        """Another XML statement of the provider (a ledger checkpoint), CAdES-B-T like evidence."""
        return await stamp_der(await self._sign(content), self._tsa)

    async def _sign(self, content: bytes) -> bytes:
        if self._pair.in_token:  # a round trip to the token: off the event loop
            signed = await asyncio.to_thread(
                cms.sign, self._pair, content=content, detached=False, chain=self._chain
            )
        else:
            # A software ECDSA signature over a few KB costs a fraction of a millisecond, less
            # than the two thread switches a worker would cost.
            signed = cms.sign(self._pair, content=content, detached=False, chain=self._chain)
        return bytes(signed.dump())

    async def stamp(self, basic: SignedEvidence) -> SignedEvidence:
        """The CAdES-B-T version of B-B evidence: the same signature plus its time-stamp."""
        return SignedEvidence(
            evidence=basic.evidence,
            xml=basic.xml,
            der=await stamp_der(basic.der, self._tsa),
            stamped=True,
        )


async def stamp_der(der: bytes, tsa: TimeStamper) -> bytes:
    """Add a signature time-stamp from `tsa` to the CMS signature `der` (CAdES-B-B → B-T)."""
    # Our own signature, just made or read back from our ledger: parse only what is needed here
    # (cms.load's full validation of certificates and attributes costs milliseconds).
    signed = cms.DerContentInfo.load(der)
    # EN 319 122-1 §5.3: the signature time-stamp covers the SignerInfo signature value.
    imprint = imprint_of(cms.signature_value(signed))
    token = await metrics.tsa_request(tsa.token(imprint))
    # The TimeStamper wrote the token's messageImprint or checked it (RFC 3161 §2.4.2) and says
    # which it is, so nothing is parsed here. A TSA answering for other data would leave evidence
    # that later fails verification; refuse it now, while the event can still be retried.
    if token.algorithm != "sha256" or not hmac.compare_digest(token.imprint, imprint):
        raise TokenImprintError("the TSA returned a token over different data")
    return bytes(cms.add_signature_timestamp(signed, token.der).dump())
