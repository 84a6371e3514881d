"""`kepmta accounts …` as an administrator uses it, against a real development folder and database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kepclient import accounts_cli

from kepmta import devinit
from kepmta.config import Ports


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    devinit.create_identity(folder, Ports(1, 2, 3, 4))
    return folder


def add_person(data: Path, first: str, last: str, *extra: str) -> str:
    code, out, err = accounts_cli(
        data,
        "add",
        "person",
        "--first-name",
        first,
        "--last-name",
        last,
        "--password-stdin",
        *extra,
        stdin="uzun-bir-parola\n",
    )
    assert code == 0, err
    return out


def show(data: Path, address: str) -> dict[str, object]:
    code, out, err = accounts_cli(data, "show", address, "--json")
    assert code == 0, err
    shown: dict[str, object] = json.loads(out)
    return shown


def test_person_addresses_are_assigned_and_closed_ones_never_reused(data: Path) -> None:
    first = add_person(data, "Ayşe", "Kaya", "--national-id", "12345678950")
    assert first == "ayse.kaya@kep.test"
    assert show(data, first)["state"] == "pending"
    assert accounts_cli(data, "close", first)[0] == 0
    # the closed address stays taken: the next Ayşe Kaya gets .1, then .2
    assert add_person(data, "Ayse", "KAYA") == "ayse.kaya.1@kep.test"
    assert add_person(data, "Ayşe", "Kaya", "--active") == "ayse.kaya.2@kep.test"
    assert show(data, "ayse.kaya.2@kep.test")["state"] == "active"


def test_reopen_only_by_the_holder(data: Path) -> None:
    address = add_person(data, "Çağrı", "Işık", "--national-id", "12345678950", "--active")
    assert address == "cagri.isik@kep.test"
    assert accounts_cli(data, "close", address)[0] == 0
    code, _, err = accounts_cli(data, "activate", address)
    assert code == 1 and "closed" in err and "reopen" in err
    code, _, err = accounts_cli(data, "reopen", address, "--national-id", "10987654370")
    assert code == 1 and "not that of" in err
    assert show(data, address)["state"] == "closed"
    code, _out, _ = accounts_cli(data, "reopen", address, "--national-id", "12345678950")
    assert code == 0 and show(data, address)["state"] == "active"


def test_state_changes(data: Path) -> None:
    address = add_person(data, "Ali", "Veli")
    assert accounts_cli(data, "block", address)[0] == 1  # pending accounts are activated, not blocked
    assert accounts_cli(data, "activate", address)[0] == 0
    assert accounts_cli(data, "block", address)[0] == 0
    assert show(data, address)["state"] == "blocked"
    code, _, err = accounts_cli(data, "block", address)
    assert code == 1 and "already blocked" in err
    assert accounts_cli(data, "activate", address)[0] == 0
    assert show(data, address)["state"] == "active"


def test_entities_and_operators(data: Path) -> None:
    code, entity, err = accounts_cli(
        data, "add", "entity", "--legal-name", "Örnek Dış Ticaret A.Ş.", "--free", "hukuk"
    )
    assert code == 0, err and entity == "ornek-dis-ticaret-a-s.hukuk@kep.test"
    code, by_mersis, _ = accounts_cli(
        data,
        "add",
        "entity",
        "--legal-name",
        "Örnek",
        "--mersis",
        "0123456789502345",
        "--address-from",
        "mersis",
    )
    assert code == 0 and by_mersis == "0123456789502345@kep.test"
    person = add_person(data, "Mehmet", "Demir", "--active")
    assert accounts_cli(data, "add-operator", entity, person)[0] == 0
    code, _, err = accounts_cli(data, "add-operator", entity, person)
    assert code == 1 and "already an operator" in err
    code, _, err = accounts_cli(data, "add-operator", person, entity)
    assert code == 1 and "not a legal entity" in err
    assert show(data, entity)["operators"] == [person]
    assert show(data, person)["operator_of"] == [entity]
    assert accounts_cli(data, "remove-operator", entity, person)[0] == 0
    assert show(data, entity)["operators"] == []
    code, _, err = accounts_cli(data, "passwd", entity, "--password-stdin", stdin="whatever-123\n")
    assert code == 1 and "legal entity" in err


def test_quota_and_listing(data: Path) -> None:
    address = add_person(data, "Zeynep", "Ak", "--quota", "200MB", "--type", "recipient-only")
    row = show(data, address)
    assert row["quota"] == 200 * 1024 * 1024 and row["type"] == "recipient-only"
    assert accounts_cli(data, "set-quota", address, "1G")[0] == 0
    assert show(data, address)["quota"] == 1024**3
    code, out, _ = accounts_cli(data, "list", "--json")
    assert code == 0 and [a["address"] for a in json.loads(out)] == [address]
    code, out, _ = accounts_cli(data, "list")
    assert "ADDRESS" in out and address in out


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("add", "person", "--first-name", "A"), None, "required"),
        (
            ("add", "person", "--first-name", "!!", "--last-name", "x", "--password-stdin"),
            "parola-1234\n",
            "no letters",
        ),
        (
            ("add", "person", "--first-name", "A", "--last-name", "B", "--password-stdin"),
            "short\n",
            "at least 8",
        ),
        (
            (
                "add",
                "person",
                "--first-name",
                "A",
                "--last-name",
                "B",
                "--national-id",
                "12",
                "--password-stdin",
            ),
            "parola-1234\n",
            "11 digits",
        ),
        (
            (
                "add",
                "person",
                "--first-name",
                "A",
                "--last-name",
                "B",
                "--national-id",
                "00000000000",
                "--password-stdin",
            ),
            "parola-1234\n",
            "never starts with 0",
        ),
        (
            # 11 digits, but the check digits are wrong (the README's old example)
            (
                "add",
                "person",
                "--first-name",
                "A",
                "--last-name",
                "B",
                "--national-id",
                "12345678901",
                "--password-stdin",
            ),
            "parola-1234\n",
            "check digits",
        ),
        (
            ("add", "entity", "--legal-name", "X", "--mersis", "12", "--address-from", "mersis"),
            None,
            "16 digits",
        ),
        (("set-quota", "nobody@kep.test", "10XB"), None, "not a size"),
        (("set-quota", "nobody@kep.test", "10MB"), None, "no account"),
        (("block", "../../etc@kep.test"), None, "no account"),
        (("frobnicate",), None, "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line_and_change_nothing(
    data: Path, args: tuple[str, ...], stdin: str | None, message: str
) -> None:
    code, out, err = accounts_cli(data, *args, stdin=stdin)
    assert code in (1, 2)
    assert message in err and len(err.splitlines()) == 1, err
    code, out, _ = accounts_cli(data, "list", "--json")
    assert json.loads(out) == []
