"""The KEP directory (rehber) through the integration API and `kepmta directory`: legal entities
always listed, persons only after opting in, pending accounts never; search by name (Turkish
letters folded), MERSİS number or address; a bulk check answers an unlisted person exactly as an
address that does not exist."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_fixtures import api_client, api_token
from kepclient import DevServer, accounts_cli, kepmta

MERSIS = "0123456789013579"


@pytest.fixture(scope="module")
def world(srv: DevServer) -> Iterator[dict[str, str]]:
    """Accounts of every kind: a listed and an unlisted person, a pending person who opted in,
    an entity with a MERSİS number, and a blocked entity."""
    tag = uuid.uuid4().hex[:6]

    def add(*args: str) -> str:
        code, address, err = accounts_cli(srv.data, "add", *args, stdin="parola-1234\n")
        assert code == 0, err
        return address

    person = ("person", "--password-stdin", "--active")
    made = {
        "listed": add(*person, "--first-name", "Şükrü", "--last-name", f"Görünür{tag}"),
        "unlisted": add(*person, "--first-name", "Gizli", "--last-name", f"Kişi{tag}"),
        "pending": add("person", "--password-stdin", "--first-name", "Bekleyen", "--last-name", f"Kişi{tag}"),
        "entity": add(
            "entity", "--active", "--legal-name", f"Çağdaş Lojistik {tag} A.Ş.", "--mersis", MERSIS
        ),
        "blocked": add("entity", "--active", "--legal-name", f"Kapalı Kurum {tag} Ltd."),
    }
    for who in ("listed", "pending"):
        code, out, err = accounts_cli(srv.data, "set-listed", made[who], "yes")
        assert code == 0 and "listed in the directory: yes" in out, err
    code, _, err = accounts_cli(srv.data, "block", made["blocked"])
    assert code == 0, err
    made["tag"] = tag
    yield made


@pytest.fixture(scope="module")
def client(srv: DevServer) -> Iterator[httpx.Client]:
    with api_client(srv, api_token(srv, srv.account(0)["address"])) as c:
        yield c


def search(client: httpx.Client, text: str) -> list[dict[str, Any]]:
    r = client.get("/v1/directory", params={"q": text})
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()["entries"]
    return entries


def test_entities_are_always_listed_and_persons_only_after_opting_in(
    client: httpx.Client, world: dict[str, str]
) -> None:
    found = {e["address"]: e for e in search(client, world["tag"])}
    assert set(found) == {world["listed"], world["entity"], world["blocked"]}
    assert found[world["entity"]] == {
        "address": world["entity"],
        "name": f"Çağdaş Lojistik {world['tag']} A.Ş.",
        "kind": "entity",
        "mersis": MERSIS,
        "active": True,
    }
    assert found[world["blocked"]]["active"] is False
    # A person shows a name and an address, never a MERSİS or T.C. kimlik number.
    assert found[world["listed"]]["kind"] == "person" and found[world["listed"]]["mersis"] is None


def test_search_by_name_folds_turkish_letters_and_case(client: httpx.Client, world: dict[str, str]) -> None:
    tag = world["tag"]
    for text in ("şükrü", "SUKRU", f"görünür{tag}", f"GORUNUR{tag}"):
        assert world["listed"] in [e["address"] for e in search(client, text)], text
    for text in (f"ÇAĞDAŞ lojistik {tag}", f"cagdas  lojistik {tag}"):
        assert [e["address"] for e in search(client, text)] == [world["entity"]], text


def test_search_by_mersis_number_and_by_address(client: httpx.Client, world: dict[str, str]) -> None:
    assert [e["address"] for e in search(client, MERSIS)] == [world["entity"]]
    assert [e["address"] for e in search(client, world["entity"])] == [world["entity"]]
    assert search(client, "0000000000000000") == []


def test_an_unlisted_person_is_never_returned(client: httpx.Client, world: dict[str, str]) -> None:
    for who in ("unlisted", "pending"):
        address = world[who]
        local = address.split("@")[0]
        for text in (address, local, "Gizli", "Bekleyen", f"Kişi{world['tag']}"):
            assert address not in [e["address"] for e in search(client, text)]


def test_a_bulk_check_answers_an_unlisted_person_as_a_missing_address(
    client: httpx.Client, world: dict[str, str]
) -> None:
    asked = [
        world["listed"],
        world["entity"].upper(),
        world["blocked"],
        world["unlisted"],
        world["pending"],
        f"nobody.{world['tag']}@kep.test",
        "not an address",
    ]
    r = client.post("/v1/directory/check", json={"addresses": asked})
    assert r.status_code == 200, r.text
    answers = [(a["address"], a["listed"], a["active"]) for a in r.json()["results"]]
    assert answers == [
        (world["listed"], True, True),
        (world["entity"].upper(), True, True),
        (world["blocked"], True, False),
        (world["unlisted"], False, None),
        (world["pending"], False, None),
        (f"nobody.{world['tag']}@kep.test", False, None),
        ("not an address", False, None),
    ]
    # Byte for byte the same answer for an unlisted person as for no account at all.
    one = client.post("/v1/directory/check", json={"addresses": [world["unlisted"]]}).json()["results"][0]
    none = client.post("/v1/directory/check", json={"addresses": [f"x{world['tag']}@kep.test"]}).json()
    assert {k: v for k, v in one.items() if k != "address"} == {
        k: v for k, v in none["results"][0].items() if k != "address"
    }


def test_a_bulk_check_takes_at_most_the_policy_s_number_of_addresses(client: httpx.Client) -> None:
    addresses = [f"a{i}@kep.test" for i in range(1000)]
    r = client.post("/v1/directory/check", json={"addresses": addresses})
    assert r.status_code == 200 and len(r.json()["results"]) == 1000
    r = client.post("/v1/directory/check", json={"addresses": [*addresses, "one.more@kep.test"]})
    assert r.status_code == 422 and r.json()["code"] == "too_many_addresses"


def test_opting_out_takes_a_person_out_of_the_directory(
    srv: DevServer, client: httpx.Client, world: dict[str, str]
) -> None:
    code, out, _ = accounts_cli(srv.data, "set-listed", world["listed"], "no")
    assert code == 0 and out.endswith("no")
    try:
        assert world["listed"] not in [e["address"] for e in search(client, world["tag"])]
        r = client.post("/v1/directory/check", json={"addresses": [world["listed"]]})
        assert r.json()["results"][0]["listed"] is False
    finally:
        assert accounts_cli(srv.data, "set-listed", world["listed"], "yes")[0] == 0
    code, _, err = accounts_cli(srv.data, "set-listed", world["entity"], "no")
    assert code == 1 and "entities are always listed" in err


def test_the_directory_commands(srv: DevServer, world: dict[str, str]) -> None:
    data = str(srv.data)
    found = kepmta("directory", "search", world["tag"], "--json", "--data", data)
    assert found.returncode == 0
    assert {e["address"] for e in json.loads(found.stdout)} == {
        world["listed"],
        world["entity"],
        world["blocked"],
    }
    assert kepmta("directory", "search", world["unlisted"], "--data", data).returncode == 1
    exported = kepmta("directory", "export", "--data", data)
    assert exported.returncode == 0
    assert world["entity"] in exported.stdout and f"MERSİS {MERSIS}" in exported.stdout
    assert world["unlisted"] not in exported.stdout and world["pending"] not in exported.stdout
    assert "(not active)" in next(line for line in exported.stdout.splitlines() if world["blocked"] in line)
