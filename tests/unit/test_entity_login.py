"""Logging in for a legal entity (SASL authorisation identity, RFC 4616 §2): AccountStore.login."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.accounts import AccountState, AccountStore, LoginRefusal
from kepmta.db.engine import open_engine
from kepmta.db.runner import close
from kepmta.ratelimit import FailureLimiter, Limits

PASSWORD = "dogru-parola-1"
CLIENT = "192.0.2.44"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_engine(database_url)
    yield eng
    await close(eng)


@pytest.fixture
async def store(engine: AsyncEngine, tmp_path: Path) -> AccountStore:
    # A limit no test reaches unless it means to: past it, a try is "try later" at once.
    limits = Limits(per_pair=3, per_address=100, per_account=100, first_delay=60, max_delay=1)
    return AccountStore(
        engine, tmp_path / "mail", domain="kep.test", default_quota=10**6, limiter=FailureLimiter(limits)
    )


async def people(store: AccountStore) -> tuple[str, str, str]:
    """An entity operated by Mehmet, and Ali who operates nothing; their addresses."""
    mehmet = await store.add_person("Mehmet", "Demir", password=PASSWORD, state=AccountState.ACTIVE)
    await store.add_person("Ali", "Yılmaz", password=PASSWORD, state=AccountState.ACTIVE)
    entity = await store.add_entity(legal_name="Örnek Ticaret A.Ş.", state=AccountState.ACTIVE)
    await store.add_operator(entity.address, mehmet.address)
    return entity.address, mehmet.address, "ali.yilmaz@kep.test"


async def test_an_operator_logs_in_as_the_entity(store: AccountStore) -> None:
    entity, mehmet, _ = await people(store)
    login = await store.login(mehmet.upper(), PASSWORD, CLIENT, authzid=f" <{entity.upper()}>")
    assert login.refusal is None
    assert login.account is not None and login.account.address == entity
    assert login.operator is not None and login.operator.address == mehmet


async def test_an_authzid_naming_the_login_is_a_plain_login(store: AccountStore) -> None:
    _, mehmet, _ = await people(store)
    login = await store.login(mehmet, PASSWORD, CLIENT, authzid=mehmet.upper())
    assert login.account is not None and login.account.address == mehmet
    assert login.operator is None


async def test_anyone_else_is_refused_as_a_wrong_password_and_counted(store: AccountStore) -> None:
    entity, mehmet, ali = await people(store)
    wrong_password = await store.login(ali, "yanlis", CLIENT)
    for i, authzid in enumerate((entity, mehmet, "yok@kep.test", "not an address")):
        # Ali's own password is right: only the identity asked for is not his to take.
        refused = await store.login(ali, PASSWORD, f"198.51.100.{i}", authzid=authzid)
        assert refused == wrong_password, authzid
    # The wrong password, then two refused identities from CLIENT: the pair's limit (3) is reached.
    await store.login(ali, PASSWORD, CLIENT, authzid=entity)
    await store.login(ali, PASSWORD, CLIENT, authzid=mehmet)
    assert (await store.login(ali, PASSWORD, CLIENT)).refusal is LoginRefusal.THROTTLED
    # The holder, from another address, still gets in: counted as failures, never a lock-out.
    plain = await store.login(ali, PASSWORD, "203.0.113.9")
    assert plain.account is not None and plain.account.address == ali


async def test_a_wrong_password_for_an_entity_is_a_wrong_password(store: AccountStore) -> None:
    entity, mehmet, _ = await people(store)
    login = await store.login(mehmet, "yanlis", CLIENT, authzid=entity)
    assert login.account is None and login.refusal is LoginRefusal.BAD_CREDENTIALS


async def test_an_entity_not_active_cannot_be_read(store: AccountStore) -> None:
    entity, mehmet, _ = await people(store)
    await store.transition(entity, "block")
    login = await store.login(mehmet, PASSWORD, CLIENT, authzid=entity)
    assert login.account is None and login.refusal is LoginRefusal.NOT_ACTIVE
    await store.remove_operator(entity, mehmet)
    await store.transition(entity, "activate")
    refused = await store.login(mehmet, PASSWORD, CLIENT, authzid=entity)
    assert refused.account is None and refused.refusal is LoginRefusal.BAD_CREDENTIALS
