"""THREAD (RFC 5256 §3): ORDEREDSUBJECT and REFERENCES threading of the messages a search found.

Everything walks the trees with explicit stacks: a chain of replies is as deep as the mailbox is
long, far past Python's recursion limit. The work grows with the messages and their references,
so the caller runs it in a worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from kepmta.imap.protocol import CommandFailed

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_CHARSETS = ("UTF-8", "US-ASCII")
# References looked at per message: the last ones name the nearest ancestors, and a header naming
# thousands of messages would only cost time.
MAX_REFERENCES = 100
_MSG_ID = re.compile(r"<([^<>\s]+)>")
# RFC 5256 §2.1 steps 2 to 5: what marks a subject as a reply or a forward.
_REPLY = re.compile(
    r"^\s*(?:\[[^\[\]]*\]\s*)*(?:re|fwd?)\s*(?:\[[^\[\]]*\])?\s*:|\(fwd\)\s*$|^\s*\[fwd:", re.I
)


@dataclass(frozen=True)
class Message:
    """One message to thread: its number in the response (sequence number or UID), its position
    in the mailbox (ties keep mailbox order), its sent date (RFC 5256 §2.2: the Date field, else
    INTERNALDATE), its base subject (RFC 5256 §2.1), and its header's ids."""

    number: int
    position: int
    sent: float
    subject: str
    reply: bool = False
    message_id: str | None = None
    references: tuple[str, ...] = ()


def check_charset(raw: bytes) -> None:
    """RFC 5256 §3: the charset of the search strings; another than ours is NO [BADCHARSET]."""
    charset = raw.decode("ascii", "replace").upper()
    if charset not in _CHARSETS:
        raise CommandFailed(f"unsupported charset {charset}", "BADCHARSET (UTF-8 US-ASCII)")


def ids(value: str | None) -> list[str]:
    """The msg-ids of a Message-ID, References or In-Reply-To field, in order."""
    return _MSG_ID.findall(value) if value else []


def is_reply(subject: str | None) -> bool:
    return bool(subject and _REPLY.search(subject))


def references_of(references: str | None, in_reply_to: str | None) -> tuple[str, ...]:
    """RFC 5256 §3 REFERENCES step 1: the References field's ids, or else In-Reply-To's first."""
    found = ids(references) or ids(in_reply_to)[:1]
    return tuple(found[-MAX_REFERENCES:])


@dataclass(eq=False)
class _Node:
    message: Message | None = None
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)


def _key(node: _Node) -> tuple[float, int]:
    """Sent date, then mailbox order; a dummy takes its first child's (RFC 5256 §3 step 5)."""
    while node.message is None and node.children:
        node = node.children[0]
    m = node.message
    return (m.sent, m.position) if m is not None else (0.0, 0)


def _walk(roots: Iterable[_Node]) -> list[_Node]:
    """Every node, each before its children."""
    order: list[_Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    return order


def _sort_siblings(roots: Sequence[_Node]) -> None:
    # Children before parents: a dummy's key is its first child's, sorted by then.
    for node in reversed(_walk(roots)):
        node.children.sort(key=_key)


def _ancestor(candidate: _Node, node: _Node | None) -> bool:
    """Whether `candidate` is `node` or one of its ancestors."""
    if not candidate.children:
        # Nothing below it, so it is the ancestor of nothing: no walk up a chain as long as the
        # mailbox for every new message.
        return candidate is node
    while node is not None:
        if node is candidate:
            return True
        node = node.parent
    return False


def _link(parent: _Node, child: _Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def references(messages: Sequence[Message]) -> list[_Node]:
    """RFC 5256 §3 REFERENCES, steps 1 to 7; returns the root set in its order."""
    table: dict[str, _Node] = {}
    nodes: list[_Node] = []
    for m in messages:
        # Step 1A: a message without an id, or with one an earlier message has, stands alone.
        node = table.get(m.message_id) if m.message_id is not None else None
        if node is None or node.message is not None:
            node = _Node()
            if m.message_id is not None and m.message_id not in table:
                table[m.message_id] = node
        node.message = m
        nodes.append(node)
        # Step 1B: the references, each the parent of the next, where no link exists yet.
        previous: _Node | None = None
        for ref in m.references:
            current = table.setdefault(ref, _Node())
            if previous is not None and current.parent is None and not _ancestor(current, previous):
                _link(previous, current)
            previous = current
        # Step 1C: the message under its last reference, replacing an earlier guess, unless that
        # makes a loop.
        if previous is not None and not _ancestor(node, previous):
            _link(previous, node)
        elif previous is None and node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    # Step 2: the root set.
    roots = _prune([n for n in {id(n): n for n in [*table.values(), *nodes]}.values() if n.parent is None])
    # Step 5: the root set by sent date.
    _sort_siblings(roots)
    roots.sort(key=_key)
    roots = _group_by_subject(roots)
    # Step 7: every set of siblings by sent date.
    _sort_siblings(roots)
    return roots


def _prune(roots: list[_Node]) -> list[_Node]:
    """Step 4: dummies without children go; those with children give them to their parent, at
    the root only when they have one child."""
    for node in reversed(_walk(roots)):
        kept: list[_Node] = []
        for child in node.children:
            kept.extend(child.children if child.message is None else [child])
        for child in kept:
            child.parent = node
        node.children = kept
    out: list[_Node] = []
    for root in roots:
        if root.message is None and len(root.children) <= 1:
            for child in root.children:
                child.parent = None
                out.append(child)
            continue
        out.append(root)
    return out


def _subject_message(node: _Node) -> Message | None:
    return node.message if node.message is not None else node.children[0].message if node.children else None


def _group_by_subject(roots: list[_Node]) -> list[_Node]:
    """Step 6: roots with the same base subject become one thread."""
    table: dict[str, _Node] = {}
    for root in roots:
        m = _subject_message(root)
        if m is None or not m.subject:
            continue
        held = table.get(m.subject)
        if (
            held is None
            or (root.message is None and held.message is not None)
            or (
                held.message is not None
                and root.message is not None
                and held.message.reply
                and not root.message.reply
            )
        ):
            table[m.subject] = root
    replaced: dict[int, _Node] = {}
    gone: set[int] = set()
    for root in roots:
        m = _subject_message(root)
        if m is None or not m.subject:
            continue
        held = table[m.subject]
        if held is root:
            continue
        gone.add(id(root))
        if held.message is None:
            if root.message is None:
                for child in list(root.children):
                    _link(held, child)
            else:
                _link(held, root)
        elif root.message is not None and root.message.reply and not held.message.reply:
            _link(held, root)
        else:
            dummy = _Node()
            original = held
            _link(dummy, original)
            _link(dummy, root)
            replaced[id(original)] = dummy
            table[m.subject] = dummy
    return [replaced.get(id(r), r) for r in roots if id(r) not in gone]


def ordered_subject(messages: Sequence[Message]) -> list[_Node]:
    """RFC 5256 §3 ORDEREDSUBJECT: by base subject, then sent date; each subject's first message
    is the parent of the others, and the threads go by their first message's date."""
    groups: dict[str, list[Message]] = {}
    for m in sorted(messages, key=lambda m: (m.sent, m.position)):
        groups.setdefault(m.subject, []).append(m)
    roots: list[_Node] = []
    for members in groups.values():
        root = _Node(members[0])
        for m in members[1:]:
            _link(root, _Node(m))
        roots.append(root)
    roots.sort(key=_key)
    return roots


def render(roots: Sequence[_Node]) -> str:
    """The THREAD response's threads (RFC 5256 §4): a chain of only children as numbers side by
    side, two or more children each in parentheses."""
    out: list[str] = []
    stack: list[_Node | str] = list(reversed(roots))
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node: _Node = item
        out.append("(")
        numbers: list[str] = []
        while True:
            if node.message is not None:
                numbers.append(str(node.message.number))
            if len(node.children) != 1:
                break
            node = node.children[0]
        out.append(" ".join(numbers))
        stack.append(")")
        if node.children:
            if numbers:
                out.append(" ")
            stack.extend(reversed(node.children))
    return "".join(out)


THREADERS: dict[str, Callable[[Sequence[Message]], list[_Node]]] = {
    "ORDEREDSUBJECT": ordered_subject,
    "REFERENCES": references,
}
