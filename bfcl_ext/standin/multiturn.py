"""The stand-in's oracle for BFCL's multi-turn categories, in function-calling mode.

bfcl-eval plays a multi-turn entry as a conversation: each turn adds a user message, and
within a turn it keeps asking while the model answers with tool calls, executing them and
appending their results; an answer in text ends the turn. A perfect model therefore:

* on the first step of turn k, calls what BFCL's ground truth calls in turn k, in order
  (``"cd(folder='document')"`` becomes a tool call ``cd`` with ``{"folder": "document"}``);
* once its calls have been executed (the last message is a tool result), says it is done;
* answers in text at once when the ground truth of the turn is ``[]`` (a miss_param turn
  lacking a parameter, a miss_func turn whose function is held back).

The entry is found by the user messages so far (one a turn; a miss_func turn that brings the
held-back function back carries bfcl-eval's fixed "I have updated some more functions" prompt)
and the set of offered tool names. Several entries can match: a long_context entry asks the
same as its base entry, and some miss_param entries start like theirs. Where their answers
differ, the oracle tells them apart as a model would, by what it has seen: it replays the
conversation's calls in each candidate's world (bfcl-eval's own executable classes, with the
entry's initial state) and keeps the candidates whose results match the tool messages. Where
nothing seen so far separates them (the first turn), it first makes one read-only "probe"
call (``du()``, ``get_watchlist()``, ...) whose result differs between their worlds, chosen
by the same simulation; probe calls are marked in their tool-call id so that later requests
can tell them from answers. Candidates whose worlds are identical cannot be told apart: the
first of BFCL's base, long_context, miss_param, miss_func wins (in a wrong mode, the first
that is to be answered right, so that a wrong category spoils its own entries only).

Calls a candidate expects that were already made in earlier turns (an earlier turn was
answered for a look-alike entry) are not repeated: the oracle answers the rest of the
candidate's ground truth after what the conversation already executed, when that is a prefix.
If nothing is left in a turn whose ground truth has calls, it repeats the read-only ones (the
checker wants at least one call in such a turn).

Wrong modes (``is_wrong(category)``) add an argument no function has to every call the entry's
answer makes: each call fails, and the checker fails the entry.

BFCL's data and executor are reached through bfcl_ext.bridge, on first use (reading the data, simulating).
"""

from __future__ import annotations

import ast
import copy
import itertools
import json
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bfcl_ext import bridge
from bfcl_ext.standin.request import text_of

CATEGORIES: tuple[str, ...] = (
    "multi_turn_base",
    "multi_turn_miss_func",
    "multi_turn_miss_param",
    "multi_turn_long_context",
)
"""The multi-turn categories the oracle knows."""

PREFERENCE: tuple[str, ...] = (
    "multi_turn_base",
    "multi_turn_long_context",
    "multi_turn_miss_param",
    "multi_turn_miss_func",
)
"""Which of several indistinguishable entries the oracle answers for, first first."""

PROBE_ID_PREFIX = "chatcmpl-tool-probe-"
"""Tool-call ids of probe calls start with this (vLLM's are ``chatcmpl-tool-<hex>``)."""

DONE = "Done: the calls above did what you asked."
CANNOT = "I cannot do that yet: a detail or a function I would need is missing."
_WRONG_ARGUMENT = "standin_wrong_argument"


@dataclass(frozen=True)
class Call:
    """One function call: its name as offered, and its arguments as JSON values."""

    name: str
    arguments: dict[str, Any]

    def key(self) -> tuple[str, str]:
        """What two calls must share to be the same call."""
        return self.name, json.dumps(self.arguments, sort_keys=True, ensure_ascii=False)

    def source(self) -> str:
        """The call as bfcl-eval executes a decoded tool call (``convert_to_function_call``)."""
        return f"{self.name}({','.join(f'{k}={v!r}' for k, v in self.arguments.items())})"


@dataclass(frozen=True)
class Entry:
    """One multi-turn entry, as the oracle needs it."""

    id: str
    category: str
    users: tuple[str, ...]  # the user message of each turn, as bfcl-eval sends it (stripped)
    tools: tuple[frozenset[str], ...]  # the tool names offered in each turn
    turns: tuple[tuple[Call, ...], ...]  # the ground truth of each turn
    no_argument_functions: tuple[str, ...]  # functions without required parameters, in doc order
    initial_config: dict[str, Any] = field(repr=False)
    involved_classes: tuple[str, ...] = ()

    @property
    def long_context(self) -> bool:
        return "long_context" in self.category  # as bfcl-eval decides it

    @property
    def world(self) -> str:
        """Entries with the same world answer every call alike: no probe can tell them apart."""
        return json.dumps([self.initial_config, self.involved_classes, self.long_context], sort_keys=True)

    def rank(self) -> tuple[int, int]:
        return PREFERENCE.index(self.category), int(self.id.rsplit("_", 1)[1])


@dataclass(frozen=True)
class Reply:
    """What to answer: ``calls`` (tool calls) or ``text``, and for which entry."""

    entry_id: str
    category: str
    calls: tuple[Call, ...] = ()
    text: str | None = None
    probe: bool = False

    def mark(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Give a rendered probe's tool calls recognisable ids (``payload`` is a chat.completion)."""
        if self.probe:
            for call in payload["choices"][0]["message"].get("tool_calls") or []:
                call["id"] = PROBE_ID_PREFIX + call["id"].rsplit("-", 1)[-1]
        return payload


# --------------------------------------------------------------------------- BFCL's data


def load_entries() -> list[Entry]:
    """Every entry of the multi-turn categories with its ground truth, read through the bridge."""
    added_prompt = bridge.added_functions_prompt()
    entries = []
    for category in CATEGORIES:
        truth = {gt["id"]: gt["ground_truth"] for gt in bridge.ground_truth_entries(category)}
        for raw in bridge.dataset_entries(category):
            entries.append(_entry(raw, category, truth[raw["id"]], added_prompt))
    return entries


def _entry(raw: dict[str, Any], category: str, ground_truth: list[list[str]], added_prompt: str) -> Entry:
    """An entry from its data (functions populated by bfcl-eval) and its ground truth."""
    held_back = {int(turn): docs for turn, docs in raw.get("missed_function", {}).items()}
    docs = list(raw["function"]) + [doc for turn in sorted(held_back) for doc in held_back[turn]]
    parameters = {doc["name"]: tuple(doc.get("parameters", {}).get("properties", {})) for doc in docs}
    names = {doc["name"] for doc in raw["function"]}
    users, tools = [], []
    for index, messages in enumerate(raw["question"]):
        if index in held_back:  # bfcl-eval sends this prompt along with the functions
            names |= {doc["name"] for doc in held_back[index]}
            users.append(added_prompt.strip())
        else:
            users.append(" ".join(text_of(m.get("content")).strip() for m in messages if m.get("role") == "user"))
        tools.append(frozenset(names))
    return Entry(
        id=raw["id"],
        category=category,
        users=tuple(users),
        tools=tuple(tools),
        turns=tuple(tuple(parse_call(text, parameters) for text in turn) for turn in ground_truth),
        no_argument_functions=tuple(d["name"] for d in docs if not d.get("parameters", {}).get("required")),
        initial_config=raw.get("initial_config", {}),
        involved_classes=tuple(raw["involved_classes"]),
    )


def parse_call(text: str, parameters: dict[str, Sequence[str]]) -> Call:
    """A ground-truth call ``"f(a, b=1)"``: positional arguments get their names from the
    function's documented parameters, in order (the order of the Python methods too)."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain function call: {text!r}")
    name = node.func.id
    names = parameters.get(name, ())
    if len(node.args) > len(names):
        raise ValueError(f"{text!r}: more positional arguments than {name} has parameters")
    arguments = {names[i]: ast.literal_eval(arg) for i, arg in enumerate(node.args)}
    arguments.update({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg})
    return Call(name, json.loads(json.dumps(arguments)))  # as JSON carries them: tuples -> lists


_MAX_HELD_BACK = 3  # the most functions a miss_func entry holds back (BFCL v4: 3)


def _function_classes() -> tuple[frozenset[str], ...]:
    """The function names of each class in bfcl-eval's multi-turn docs (cheap: no entries read)."""
    classes = []
    for path in bridge.multi_turn_doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        classes.append(frozenset(json.loads(line)["name"] for line in lines if line.strip()))
    return tuple(classes)


# --------------------------------------------------------------------------- the request


@dataclass
class _Step:
    """One assistant message: its tool calls (none: it answered in text) and their results."""

    calls: list[Call]
    outputs: list[str]
    probe: bool


@dataclass
class Conversation:
    """A chat request, as turns: the user messages and the assistant steps after each."""

    users: tuple[str, ...]
    turns: list[list[_Step]]

    @classmethod
    def parse(cls, messages: Sequence[Any]) -> Conversation:
        users: list[str] = []
        turns: list[list[_Step]] = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            if role == "user":
                users.append(text_of(message.get("content")).strip())
                turns.append([])
            elif role == "assistant" and turns:
                tool_calls = message.get("tool_calls") or []
                calls = [_decoded(c) for c in tool_calls if isinstance(c, dict)]
                probe = bool(tool_calls) and all(
                    str(c.get("id", "")).startswith(PROBE_ID_PREFIX) for c in tool_calls if isinstance(c, dict)
                )
                turns[-1].append(_Step(calls, [], probe))
            elif role == "tool" and turns and turns[-1]:
                turns[-1][-1].outputs.append(text_of(message.get("content")))
        return cls(tuple(users), turns)

    def executed(self, before_turn: int) -> list[Call]:
        """The calls answered (probes left out) in the turns before ``before_turn``."""
        return [c for turn in self.turns[:before_turn] for step in turn if not step.probe for c in step.calls]

    def steps(self) -> list[_Step]:
        return [step for turn in self.turns for step in turn]


def _decoded(tool_call: dict[str, Any]) -> Call:
    function = tool_call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = {}
    return Call(str(function.get("name", "")), arguments if isinstance(arguments, dict) else {})


# --------------------------------------------------------------------------- simulation


class _World:
    """A candidate entry's classes in their initial state, run by bfcl-eval's own executor.

    ``execute_multi_turn_func_call`` keeps instances in its module's globals under a name
    made from the model name; each world uses a fresh one and removes it on close.
    """

    _serial = itertools.count()

    def __init__(self, entry: Entry) -> None:
        self._entry = entry
        self._name = f"bfcl_ext_standin_world_{next(self._serial)}"
        self.instances: dict[str, Any] = {}
        self.run([])

    def run(self, calls: Iterable[Call]) -> list[str]:
        results, self.instances = bridge.execute_multi_turn_calls(
            [call.source() for call in calls],
            self._entry.initial_config,
            list(self._entry.involved_classes),
            self._name,
            self._entry.id,
            long_context=self._entry.long_context,
        )
        return results

    def snapshot(self) -> dict[str, Any]:
        """Every attribute of every instance, private ones and random generators included."""
        return {
            name: {
                key: value.getstate() if isinstance(value, random.Random) else copy.deepcopy(value)
                for key, value in vars(instance).items()
            }
            for name, instance in self.instances.items()
        }

    def close(self) -> None:
        bridge.forget_multi_turn_model(self._name)

    def __enter__(self) -> _World:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _consistent(entry: Entry, steps: Sequence[_Step]) -> bool:
    """Whether replaying ``steps`` in ``entry``'s world gives the results the conversation shows."""
    with _World(entry) as world:
        for step in steps:
            if step.calls:
                outputs = world.run(step.calls)
                if step.outputs and outputs != step.outputs:
                    return False
    return True


def _probe_outputs(entry: Entry, steps: Sequence[_Step], probe: Call) -> str | None:
    """``probe``'s result after ``steps`` in ``entry``'s world; None if it changes anything."""
    with _World(entry) as world:
        for step in steps:
            if step.calls:
                world.run(step.calls)
        before = world.snapshot()
        (output,) = world.run([probe])
        return output if world.snapshot() == before else None


def _harmless(entry: Entry, calls: Sequence[Call], steps: Sequence[_Step], offered: frozenset[str]) -> tuple[Call, ...]:
    """The read-only ones of ``calls`` (after ``steps`` in ``entry``'s world), else one read-only
    call without arguments, else none."""
    read_only = tuple(call for call in calls if _probe_outputs(entry, steps, call) is not None)
    if read_only:
        return read_only
    for name in entry.no_argument_functions:
        if name in offered and _probe_outputs(entry, steps, Call(name, {})) is not None:
            return (Call(name, {}),)
    return ()


def _find_probe(entries: Sequence[Entry], steps: Sequence[_Step], offered: frozenset[str]) -> Call | None:
    """A read-only call without arguments whose result tells the most of ``entries`` apart."""
    best: tuple[int, Call | None] = (1, None)
    for name in entries[0].no_argument_functions:
        if name not in offered:
            continue
        probe = Call(name, {})
        outputs = [_probe_outputs(entry, steps, probe) for entry in entries]
        if None in outputs:
            continue
        distinct = len(set(outputs))
        if distinct == len(entries):
            return probe
        if distinct > best[0]:
            best = (distinct, probe)
    return best[1]


# --------------------------------------------------------------------------- the oracle


class MultiTurnOracle:
    """Answers multi-turn requests; loads BFCL's data on the first request that may be one."""

    def __init__(
        self,
        loader: Callable[[], list[Entry]] = load_entries,
        classes: Callable[[], tuple[frozenset[str], ...]] = _function_classes,
    ) -> None:
        self._loader = loader
        self._classes_loader = classes
        self._lock = threading.Lock()
        self._classes: tuple[frozenset[str], ...] | None = None
        self._index: dict[tuple[tuple[str, ...], frozenset[str]], list[tuple[Entry, int]]] | None = None

    def may_be_multi_turn(self, offered: Iterable[str]) -> bool:
        """Whether the tools are whole classes of multi-turn functions, but for a few held back.
        A multi-turn entry offers every function of its classes; no entries are read for this."""
        names = frozenset(offered)
        with self._lock:
            if self._classes is None:
                self._classes = self._classes_loader()
        covered = [c for c in self._classes if c & names and len(c - names) <= _MAX_HELD_BACK]
        return bool(names) and names <= frozenset().union(*covered)

    def candidates(self, users: Sequence[str], offered: Iterable[str]) -> list[tuple[Entry, int]]:
        """The entries (and turn) whose user messages so far and tools at that turn are these."""
        with self._lock:
            if self._index is None:
                index: dict[tuple[tuple[str, ...], frozenset[str]], list[tuple[Entry, int]]] = {}
                for entry in sorted(self._loader(), key=Entry.rank):
                    for turn in range(len(entry.users)):
                        index.setdefault((entry.users[: turn + 1], entry.tools[turn]), []).append((entry, turn))
                self._index = index
        return list(self._index.get((tuple(users), frozenset(offered)), []))

    def answer(
        self, messages: Sequence[Any], offered: Iterable[str], is_wrong: Callable[[str], bool] = lambda c: False
    ) -> Reply | None:
        """The reply to a chat request, or None when it is not about a multi-turn entry."""
        offered = frozenset(offered)
        if not self.may_be_multi_turn(offered):
            return None
        talk = Conversation.parse(messages)
        found = self.candidates(talk.users, offered) if talk.users else []
        if not found:
            return None
        turn = found[0][1]
        current = talk.turns[-1]
        probed = bool(current) and all(step.probe for step in current)
        entry, probe = _resolve([e for e, _ in found], turn, talk, offered, is_wrong, may_probe=not current)
        if probe is not None:
            return Reply(entry.id, entry.category, calls=(probe,), probe=True)
        if current and not probed:  # this turn's calls have been made (or it was answered)
            return Reply(entry.id, entry.category, text=DONE)
        calls = _remaining(entry, turn, talk)
        if not calls and entry.turns[turn]:  # done earlier; the checker still wants a call this turn
            calls = _harmless(entry, entry.turns[turn], talk.steps(), offered)
        if not calls:
            return Reply(entry.id, entry.category, text=CANNOT if not entry.turns[turn] else DONE)
        if is_wrong(entry.category):
            calls = tuple(Call(c.name, {**c.arguments, _WRONG_ARGUMENT: True}) for c in calls)
        return Reply(entry.id, entry.category, calls=calls)


def _remaining(entry: Entry, turn: int, talk: Conversation) -> tuple[Call, ...]:
    """What ``entry`` still needs called in ``turn``: its ground truth for the turn, unless the
    conversation already made some of its calls in earlier turns (it was answered for a
    look-alike entry), then the rest of its ground truth so far after those."""
    done = [call.key() for call in talk.executed(turn)]
    expected = [call for calls in entry.turns[: turn + 1] for call in calls]
    if [call.key() for call in expected[: len(done)]] == done:
        return tuple(expected[len(done) :])
    return entry.turns[turn]


def _resolve(
    entries: list[Entry],
    turn: int,
    talk: Conversation,
    offered: frozenset[str],
    is_wrong: Callable[[str], bool],
    may_probe: bool,
) -> tuple[Entry, Call | None]:
    """The entry to answer for, or a probe to make first (with the entry it is made for).
    Look-alikes that would be answered alike (same calls, both right or both wrong) need not
    be told apart; of look-alikes that cannot be told apart, one answered right is preferred
    (a wrong mode spoils its own category's entries, not others that start like them)."""
    worlds: dict[str, Entry] = {}
    for entry in sorted(entries, key=lambda e: is_wrong(e.category)):  # stable: by preference
        worlds.setdefault(entry.world, entry)  # the first of each world stands for it
    choices = list(worlds.values())

    def agreed() -> bool:
        return len({(tuple(c.key() for c in _remaining(e, turn, talk)), is_wrong(e.category)) for e in choices}) == 1

    if agreed():
        return choices[0], None
    steps = talk.steps()
    choices = [entry for entry in choices if _consistent(entry, steps)] or choices
    if agreed() or not may_probe:
        return choices[0], None
    return choices[0], _find_probe(choices, steps, offered)


ORACLE = MultiTurnOracle()
"""The process's oracle: BFCL's data is read once, on the first request that may need it."""
