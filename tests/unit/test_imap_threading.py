"""The threading algorithms on their own (RFC 5256): deep chains without recursion, the response
syntax of RFC 5256 §4's examples, and subject grouping."""

from __future__ import annotations

from kepmta.imap import thread


def msg(
    n: int, mid: str | None, refs: tuple[str, ...] = (), subject: str = "S", reply: bool = False
) -> thread.Message:
    return thread.Message(n, n, float(n), subject, reply, mid, refs)


def test_the_rfc_example_shape_renders_as_in_rfc_5256() -> None:
    messages = [
        msg(3, "c"),
        msg(6, "f", ("c",)),
        msg(4, "d", ("c", "f")),
        msg(23, "w", ("c", "f", "d")),
        msg(44, "x", ("c", "f")),
        msg(7, "g", ("c", "f", "x")),
        msg(96, "z", ("c", "f", "x", "g")),
    ]
    # Ordered by date (here the number), so 44 comes after 4 among 6's children.
    assert (
        thread.render(thread.references(sorted(messages, key=lambda m: m.position)))
        == "(3 6 (4 23)(44 7 96))"
    )
    assert thread.render(thread.references([msg(3, "c", ("gone",)), msg(5, "e", ("gone",))])) == "((3)(5))"


def test_a_chain_far_deeper_than_the_recursion_limit() -> None:
    depth = 20_000
    messages = [msg(1, "m1")] + [msg(n, f"m{n}", (f"m{n - 1}",)) for n in range(2, depth + 1)]
    text = thread.render(thread.references(messages))
    assert text == "(" + " ".join(str(n) for n in range(1, depth + 1)) + ")"
    assert thread.render(thread.ordered_subject(messages)).startswith("(1 (2)(3)")


def test_subjects_join_threads_a_reply_under_the_original() -> None:
    original, reply, other = (
        msg(1, "a", subject="PLAN"),
        msg(2, "b", subject="PLAN", reply=True),
        msg(3, "c", subject="X"),
    )
    assert thread.render(thread.references([original, reply, other])) == "(1 2)(3)"
    # Two originals with one subject: a dummy holds both.
    assert (
        thread.render(thread.references([msg(1, "a", subject="P"), msg(2, "b", subject="P")])) == "((1)(2))"
    )


def test_ids_and_references() -> None:
    assert thread.ids("<a@x> junk <b@y>") == ["a@x", "b@y"]
    assert thread.references_of(None, "<p@x> <q@x>") == ("p@x",)
    assert thread.references_of("<a@x> <b@x>", "<p@x>") == ("a@x", "b@x")
    assert thread.is_reply("re: plan") and thread.is_reply("[list] Fwd: plan") and not thread.is_reply("plan")
