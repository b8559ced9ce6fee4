"""JavaScript transformations: an ES5 ``function transform(profile)`` run by Duktape (pyduktape2).

Nothing interrupts Duktape inside a process (it holds the GIL; SIGALRM handlers never run;
Airflow's ``execution_timeout`` cannot stop ``while (true) {}``), so the source runs in a worker
process (``_js_worker.py``) that the transformer kills and replaces when a profile overruns the time
limit or kills the worker. The worker is a fresh interpreter (fork + exec), never a fork of the
task process, and lives across batches: one pipe round trip per batch of profiles.

pyduktape2 is GPL-2.0-only, hence the optional ``javascript`` extra; this module imports it only
inside ``syntax_problems`` (the worker imports it on its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import math
import mmap
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from krenalis_airflow.core.transform._js_worker import HEADER, LOADING
from krenalis_airflow.core.transform.base import Payload
from krenalis_airflow.exceptions import TransformationUnusable, TransformError

WORKER = Path(__file__).with_name("_js_worker.py")
STARTING = -3  # progress until the worker has read the source
BATCH_START = -1  # progress while the worker parses a batch, before the first profile
STARTUP_LIMIT = 30.0  # seconds for a new interpreter to import pyduktape2 on a loaded machine
PIPE_SIZE = 1 << 20
INSTALL_HINT = "JavaScript transformations need pyduktape2: pip install 'krenalis-airflow[javascript]'"

Result = Payload | TransformError


class JavaScriptTransformer:
    """The ``Transformer`` for a ``javascript:`` source, backed by one reusable worker process.

    ``timeout`` bounds each profile (seconds), ``memory_mb`` the worker's extra address space.
    A profile that overruns either, crashes the worker or makes ``transform`` throw is rejected
    alone; the other profiles of its batch are transformed as usual. A source that cannot load
    raises ``TransformationUnusable``: it would reject every profile, so the run should stop at once.
    After a fork, the child leaves the parent's worker alone and starts its own.
    """

    def __init__(
        self, source: str, *, timeout: float = 5.0, memory_mb: int = 256, batch_size: int = 1000
    ) -> None:
        if timeout <= 0 or memory_mb <= 0 or batch_size <= 0:
            raise ValueError("timeout, memory_mb and batch_size must be positive")
        if importlib.util.find_spec("pyduktape2") is None:
            raise TransformationUnusable(INSTALL_HINT)
        self.source = source
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.batch_size = batch_size
        self._worker: _Worker | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> JavaScriptTransformer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def transform_batch(self, profiles: Sequence[Mapping[str, Any]]) -> list[Result]:
        """One result per profile, in order; ``batch_size`` profiles per worker round trip."""
        with self._lock:
            try:
                results: list[Result] = []
                for start in range(0, len(profiles), self.batch_size):
                    results += self._transform(list(profiles[start : start + self.batch_size]))
                return results
            except BaseException:  # e.g. Airflow's timeout: the worker is mid-batch, drop it
                self._retire()
                raise

    def close(self) -> None:
        """Stop the worker (it is started again if the transformer is used afterwards)."""
        with self._lock:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None

    @property
    def worker_pid(self) -> int | None:
        """The current worker's process id (None before the first batch); for tests and logs."""
        return None if self._worker is None else self._worker.pid

    def _transform(self, profiles: list[Mapping[str, Any]]) -> list[Result]:
        """Run ``profiles``, replacing the worker as often as runaways or crashes demand."""
        results: list[Result] = []
        while profiles:
            reply = self._current_worker().run(profiles)
            results += [self._result(item) for item in reply.items]
            profiles = profiles[len(reply.items) :]
            if reply.failed_at is not None:
                # The profiles before the culprit finished, but their results died with the worker.
                self._retire()
                results += self._transform(profiles[: reply.failed_at])
                results.append(TransformError(reply.failure))
                profiles = profiles[reply.failed_at + 1 :]
            elif reply.retire:
                self._retire()
        return results

    def _current_worker(self) -> _Worker:
        worker = self._worker
        if worker is not None and not worker.usable():
            worker.abandon()
            worker = None
        if worker is None:
            worker = self._worker = _Worker(self.source, self.timeout, self.memory_mb)
        return worker

    def _retire(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    @staticmethod
    def _result(item: Any) -> Result:
        """A payload (field paths and values are checked by the transform step, for every
        language), or the reason, from the worker, that the profile is rejected."""
        return TransformError(item) if isinstance(item, str) else item


# --- running ------------------------------------------------------------------------------------


@dataclass
class _Reply:
    """What a worker did with a batch: results for ``items`` profiles, then maybe a failure.

    ``failed_at`` is the index (in the batch) of the profile that ran away or killed the worker;
    the results of the profiles before it are lost (``items`` is empty then) and the worker is gone.
    """

    items: list[Any] = field(default_factory=list)
    failed_at: int | None = None
    failure: str = ""
    retire: bool = False  # the worker asked to be replaced (it ran out of memory)


class _Worker:
    """One worker process: its pipes, its progress mapping, and the watch on its time limit."""

    def __init__(self, source: str, timeout: float, memory_mb: int) -> None:
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.owner = os.getpid()
        self._progress_file = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the worker
        self._progress_file.truncate(8)
        self._shared = mmap.mmap(self._progress_file.fileno(), 8)
        self._progress = memoryview(self._shared).cast("q")
        self._progress[0] = STARTING
        fd = self._progress_file.fileno()
        self._process = subprocess.Popen(
            [sys.executable, "-P", str(WORKER), str(fd), str(memory_mb), str(self.owner)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            pass_fds=(fd,),
        )
        self.pid = self._process.pid
        self._finalizer = weakref.finalize(self, _kill_if_owner, self._process, self.owner)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin, self._stdout = self._process.stdin.fileno(), self._process.stdout.fileno()
        _widen_pipes(self._stdin, self._stdout)
        self._poll = select.poll()
        self._poll.register(self._stdout, select.POLLIN)
        self._load(source)

    def run(self, profiles: list[Mapping[str, Any]]) -> _Reply:
        self._progress[0] = BATCH_START
        answer = self._exchange(_encode(profiles))
        if not isinstance(answer, _Reply):
            kind, body = answer
            if kind in (b"R", b"X"):
                return _Reply(items=_decode(body), retire=kind == b"X")
            answer = self._failure(f"the JavaScript worker failed: {body}")
        # BATCH_START: it failed parsing the batch (its heap full?) before any profile ran.
        answer.failed_at = max(answer.failed_at or 0, 0)
        return answer

    def usable(self) -> bool:
        return self.owner == os.getpid() and self._process.poll() is None

    def stop(self) -> None:
        """Ask politely (EOF on stdin), then kill."""
        if self.owner == os.getpid():
            try:
                assert self._process.stdin is not None
                self._process.stdin.close()
                self._process.wait(timeout=1)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.owner == os.getpid() and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self.abandon()

    def abandon(self) -> None:
        """Drop our handles; after a fork the process belongs to the parent, which stops it."""
        if not self._finalizer.detach():
            return  # done already
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
        self._progress.release()
        self._shared.close()
        self._progress_file.close()

    def _load(self, source: str) -> None:
        """Send the source; fail the run (not each profile) when it cannot be used."""
        answer = self._exchange(source.encode("utf-8", "replace"))
        if isinstance(answer, _Reply):
            if answer.failed_at == LOADING and answer.failure.startswith("timed out"):
                raise TransformationUnusable(
                    f"the JavaScript source's top-level code timed out after {self.timeout:g} s; "
                    "it should only define functions"
                )
            raise TransformationUnusable(f"the JavaScript worker did not start: {answer.failure}")
        kind, body = answer
        if kind != b"R":
            self.kill()
            raise TransformationUnusable(f"the JavaScript source cannot be used: {body}")

    def _exchange(self, body: bytes) -> tuple[bytes, str] | _Reply:
        """Send one frame and return the worker's answer; or, when the worker overran its time
        limit or died, a failure whose ``failed_at`` is the raw progress value (profile or phase)."""
        try:
            _write_all(self._stdin, HEADER.pack(b"B", len(body)) + body)
        except OSError:
            return self._failure(f"the JavaScript worker died ({self._exit_status()})")
        if (overrun := self._wait_for_output()) is not None:
            if _at_memory_limit(self.pid):
                return self._failure(
                    f"ran out of memory (limit {self.memory_mb} MB; timed out after {overrun:g} s)"
                )
            return self._failure(f"timed out after {overrun:g} s")
        header = _read_exactly(self._stdout, HEADER.size)
        if header is not None:
            kind, length = HEADER.unpack(header)
            if (answer := _read_exactly(self._stdout, length)) is not None:
                return kind, answer.decode()
        return self._failure(f"the JavaScript worker died ({self._exit_status()})")

    def _wait_for_output(self) -> float | None:
        """Wait while the worker makes progress; the limit in seconds once one step overruns it.

        The clock restarts whenever the progress value changes (a new profile started), so each
        profile gets ``timeout`` seconds however long the batch is.
        """
        interval_ms = max(1, math.ceil(min(0.05, self.timeout / 10) * 1000))
        seen, since = self._progress[0], time.monotonic()
        while not self._poll.poll(interval_ms):
            now, current = time.monotonic(), self._progress[0]
            limit = STARTUP_LIMIT if current == STARTING else self.timeout
            if current != seen:
                seen, since = current, now
            elif now - since > limit:
                return limit
        return None

    def _failure(self, message: str) -> _Reply:
        index = self._progress[0]
        self.kill()
        return _Reply(failed_at=index, failure=message)

    def _exit_status(self) -> str:
        try:
            code = self._process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "still running"
        if code >= 0:
            return f"exit code {code}"
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        why = "the kernel's out-of-memory killer?" if -code == signal.SIGKILL else "a crash in Duktape?"
        return f"killed by {name}: {why}"


def _encode(profiles: list[Mapping[str, Any]]) -> bytes:
    """The batch as UTF-8 JSON; raw (not ``\\u`` escaped) text, since Duktape would split
    non-BMP characters escaped as surrogate pairs into garbage."""
    rows = [p if isinstance(p, dict) else dict(p) for p in profiles]
    try:
        text = json.dumps(rows, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:  # NaN or infinity: JSON (and Duktape) has no such numbers
        text = json.dumps([_finite(row) for row in rows], ensure_ascii=False, default=str)
    return text.encode("utf-8", "replace")


def _decode(body: str) -> list[Any]:
    items: list[Any] = json.loads(body)
    if "\\ud" in body:  # \u-escaped surrogates: pairs are fine, lone ones are not text
        items = [_without_lone_surrogates(item) for item in items]
    return items


def _without_lone_surrogates(item: Any) -> Any:
    """The result, or why it is rejected when a lone surrogate (``"\\ud800"`` in the source) made
    a field something that is not text; error messages just lose the offending characters."""
    if isinstance(item, str):
        return item.encode("utf-8", "replace").decode()
    try:
        json.dumps(item, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return "a field contains a lone UTF-16 surrogate (an unpaired \\uD800-\\uDFFF escape?)"
    return item


def _finite(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _at_memory_limit(pid: int) -> bool:
    """Whether the process's address space is within 8 MiB of its limit (Linux).

    Near the limit, Duktape often does not throw "alloc failed": each failed allocation triggers
    a full garbage collection that frees just enough for the next one, and the script crawls on
    until the time limit. This tells that case apart from a plain runaway.
    """
    try:
        limits = Path(f"/proc/{pid}/limits").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    limit = re.search(r"^Max address space\s+(\d+)", limits, re.MULTILINE)
    size = re.search(r"^VmSize:\s+(\d+) kB", status, re.MULTILINE)
    return limit is not None and size is not None and int(size[1]) * 1024 >= int(limit[1]) - (8 << 20)


def _widen_pipes(*fds: int) -> None:
    """Grow the pipes to 1 MiB (Linux) so that a batch crosses in one write, not 64 KiB steps
    that each wait for the other process to be scheduled."""
    for fd in fds:
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _kill_if_owner(process: subprocess.Popen[bytes], owner: int) -> None:
    """Finalizer: a worker never outlives a transformer that was not closed (in its own process)."""
    if owner == os.getpid() and process.poll() is None:
        process.kill()
        process.wait()


# --- validation --------------------------------------------------------------------------------

# Duktape 2.7 runs ES5.1 plus a few later bits (``**``, shorthand properties and methods, computed
# keys, 0b/0o literals); these are the ES6+ constructs it rejects, named so that a spec author
# knows what to rewrite. ``const`` parses, but as a reassignable, function-scoped ``var``.
LET = "'let' is ES6; Duktape runs ES5 — use 'var'"
CONST = "'const' is ES6; Duktape runs ES5 (and would treat it as a reassignable 'var') — use 'var'"
ARROW = "arrow functions (=>) are ES6; write function (x) { … }"
TEMPLATE = "template literals (`…`) are ES6; join strings with +"
CLASS = "classes are ES6; use a constructor function and its prototype"
SPREAD = "spread/rest (...) is ES6; use arguments, apply() or concat()"
DESTRUCTURING = "destructuring is ES6; read the properties one by one (var city = p.city;)"
DEFAULT_PARAMETER = "default parameter values are ES6; write if (x === undefined) { x = …; }"
FOR_OF = "for…of is ES6; use for (var i = 0; i < list.length; i++)"
GENERATOR = "generators (function*) are ES6"
ASYNC = "async functions are ES2017; Duktape runs ES5 and has no promises"
MODULES = "modules (import/export) are ES6; define function transform(profile) at the top level"
OPTIONAL_CHAINING = "optional chaining (?.) is ES2020; write (a && a.b)"
NULLISH = "the ?? operator is ES2020; write (x === null || x === undefined ? fallback : x)"
REGEXP_FLAG = "regular expression flag '{flag}' is ES6 or later; Duktape knows g, i and m"
MISSING_GLOBAL = "{name} does not exist in Duktape (ES5){hint}"
MISSING_MEMBER = "{name} does not exist in Duktape (ES5)"
TOP_LEVEL_RETURN = "'return' outside a function"
NO_TRANSFORM = "the source must define function transform(profile)"

GLOBAL_HINTS = {
    "Map": "; use a plain object",
    "Set": "; use a plain object",
    "WeakMap": "",
    "WeakSet": "",
    "Promise": "; transform must return its result",
    "console": "; print(…) writes to the task log",
}
BUILTINS = ("Object", "Array", "String", "Number", "Math", "JSON", "Date")
REGEX_BEFORE = frozenset(
    {"return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do", "else"}
)

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*|/\*[\s\S]*?(?:\*/|$))
  | (?P<name>(?:[^\W\d]|\$)[\w$]*)
  | (?P<number>0[xXbBoO][\da-fA-F_]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\\n]|\\[\s\S])*'?|"(?:[^"\\\n]|\\[\s\S])*"?)
  | (?P<template>`(?:[^`\\]|\\[\s\S])*`?)
  | (?P<punct>>>>=|\.\.\.|===|!==|\*\*=|>>>|<<=|>>=|\?\.(?!\d)|=>|==|!=|<=|>=|&&|\|\||\?\?|\+\+|--
      |[-+*%&|^]=|<<|>>|\*\*|[\s\S])
    """,
    re.VERBOSE,
)
_REGEX = re.compile(r"/(?:[^/\\\[\n]|\\.|\[(?:[^\]\\\n]|\\.)*\])+/(?P<flags>[A-Za-z]*)")


@dataclass(frozen=True)
class _Token:
    kind: str  # name, number, string, template, regex, punct
    text: str
    line: int


def syntax_problems(source: str) -> list[str]:
    """Why ``source`` cannot be a JavaScript transformation; empty when it can.

    The source must be ES5 that Duktape compiles and must define ``function transform(profile)``.
    A token scan (aware of strings, comments and regular expressions) names each ES6+ construct
    with its line, since Duktape's own SyntaxError says only "parse error" at the first one.
    Compiling (never running) the source in a throwaway in-process context is safe: no user
    code runs, and Duktape's compiler bounds its own recursion.
    """
    if not source.strip():
        return [NO_TRANSFORM]
    tokens = _tokenize(source)
    found = _es6_constructs(tokens)
    if returns := _top_level_returns(tokens):
        found[TOP_LEVEL_RETURN] = returns
    flagged = {line for lines in found.values() for line in lines}
    problems = _render(found) + _duktape_problems(source, tokens, flagged)
    if not problems and not _defines_transform(tokens):
        problems.append(NO_TRANSFORM)
    return problems


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    position, line = 0, 1
    while position < len(source):
        match = None
        if source[position] == "/" and _regex_allowed(tokens):
            match = _REGEX.match(source, position)
        kind = "regex" if match else "punct"
        if match is None:
            match = _TOKEN.match(source, position)
            assert match is not None  # its last alternative takes any character
            kind = match.lastgroup or kind
        text = match.group()
        if kind not in ("space", "comment"):
            tokens.append(_Token(kind, text, line))
        line += text.count("\n")
        position = match.end()
    return tokens


def _regex_allowed(tokens: list[_Token]) -> bool:
    """A ``/`` starts a regular expression unless it follows something that has a value."""
    if not tokens:
        return True
    last = tokens[-1]
    if last.kind == "punct":
        return last.text not in (")", "]", "}")
    return last.kind == "name" and last.text in REGEX_BEFORE


def _es6_constructs(tokens: list[_Token]) -> dict[str, list[int]]:
    """Each ES6+ construct found → the lines it is on."""
    found: dict[str, list[int]] = {}
    declared = _declared_names(tokens)
    for i, token in enumerate(tokens):
        for construct in _constructs_at(tokens, i, declared):
            lines = found.setdefault(construct, [])
            if token.line not in lines:
                lines.append(token.line)
    return found


def _constructs_at(tokens: list[_Token], i: int, declared: set[str]) -> list[str]:  # noqa: C901 - one branch per ES6 construct named in errors
    token, after = tokens[i], _text(tokens, i + 1)
    if token.kind == "template":
        return [TEMPLATE]
    if token.kind == "regex":
        flags = token.text[token.text.rindex("/") + 1 :]
        return [REGEXP_FLAG.format(flag=flag) for flag in flags if flag not in "gim"]
    if token.kind == "punct":
        return {"=>": [ARROW], "...": [SPREAD], "?.": [OPTIONAL_CHAINING], "??": [NULLISH]}.get(
            token.text, []
        )
    if token.kind != "name" or _is_property_name(tokens, i):
        return []
    name = token.text
    constructs = []
    if name in ("var", "let", "const") and after in ("{", "["):
        constructs.append(DESTRUCTURING)
    if name == "let" and (after in ("{", "[") or _kind(tokens, i + 1) == "name"):
        constructs.append(LET)
    elif name == "const":
        constructs.append(CONST)
    elif name == "class":
        constructs.append(CLASS)
    elif name in ("import", "export"):
        constructs.append(MODULES)
    elif name == "async" and after == "function":
        constructs.append(ASYNC)
    elif name == "function":
        constructs += [GENERATOR] if after == "*" else _parameter_constructs(tokens, i)
    elif name == "for" and after == "(":
        constructs += _for_of(tokens, i + 1)
    elif name in GLOBAL_HINTS and name not in declared:
        constructs.append(MISSING_GLOBAL.format(name=name, hint=GLOBAL_HINTS[name]))
    return constructs


def _parameter_constructs(tokens: list[_Token], i: int) -> list[str]:
    """Default values and destructuring in the parameter list of the function at ``tokens[i]``."""
    start = i + 1 if _text(tokens, i + 1) == "(" else i + 2
    if _text(tokens, start) != "(":
        return []
    constructs = []
    for depth, token in _inside_parentheses(tokens, start):
        if depth == 1 and token.text == "=":
            constructs.append(DEFAULT_PARAMETER)
        elif depth == 2 and token.kind == "punct" and token.text in ("{", "["):
            constructs.append(DESTRUCTURING)
    return constructs


def _for_of(tokens: list[_Token], start: int) -> list[str]:
    """``for (x of list)``: an ``of`` right after the loop variable, in the loop's parentheses."""
    previous = None
    for depth, token in _inside_parentheses(tokens, start):
        if depth == 1 and token.text == "of" and previous is not None and previous.kind == "name":
            return [FOR_OF]
        previous = token
    return []


def _inside_parentheses(tokens: list[_Token], start: int) -> list[tuple[int, _Token]]:
    """The tokens between ``tokens[start]`` (an opening parenthesis) and its match, each with its
    bracket depth (1 directly inside; an opening bracket counts as inside what it opens)."""
    inside, depth = [], 0
    for token in tokens[start:]:
        if token.kind == "punct" and token.text in ("(", "[", "{"):
            depth += 1
        elif token.kind == "punct" and token.text in (")", "]", "}"):
            depth -= 1
        if depth == 0:
            break
        inside.append((depth, token))
    return inside[1:]


def _is_property_name(tokens: list[_Token], i: int) -> bool:
    """``p.class`` or ``{class: 1}``: ES5 allows reserved words as property names."""
    before = _text(tokens, i - 1)
    return before in (".", "?.") or (_text(tokens, i + 1) == ":" and before in ("{", ","))


def _declared_names(tokens: list[_Token]) -> set[str]:
    """Names the source declares (var, function, parameters, catch) or tests with ``typeof``,
    wherever: a spec that defines its own ``Map`` or checks for ``console`` first is fine."""
    declared = set()
    for i, token in enumerate(tokens):
        if token.text == "typeof" and _kind(tokens, i + 1) == "name":
            declared.add(tokens[i + 1].text)
        if (
            token.kind == "name"
            and token.text in ("var", "function", "let", "const")
            and _kind(tokens, i + 1) == "name"
        ):
            declared.add(tokens[i + 1].text)
        if token.kind == "name" and token.text in ("function", "catch"):
            start = next((j for j in range(i + 1, min(i + 3, len(tokens))) if tokens[j].text == "("), None)
            if start is not None:
                declared |= {t.text for depth, t in _inside_parentheses(tokens, start) if t.kind == "name"}
    return declared


def _defines_transform(tokens: list[_Token]) -> bool:
    """Top level ``function transform(`` or ``[var] transform = …``."""
    depth = 0
    for i, token in enumerate(tokens):
        if token.kind == "punct" and token.text in ("{", "(", "["):
            depth += 1
        elif token.kind == "punct" and token.text in ("}", ")", "]"):
            depth -= 1
        elif depth == 0 and token.kind == "name" and token.text == "transform":
            before, after = _text(tokens, i - 1), _text(tokens, i + 1)
            if (before == "function" and after == "(") or (after == "=" and before not in (".", "?.")):
                return True
    return False


def _top_level_returns(tokens: list[_Token]) -> list[int]:
    """Lines of ``return`` outside any function: ``new Function()`` (below) would accept them."""
    lines, depth = [], 0
    for token in tokens:
        if token.kind == "punct" and token.text in ("{", "}"):
            depth += 1 if token.text == "{" else -1
        elif depth == 0 and token.kind == "name" and token.text == "return":
            lines.append(token.line)
    return lines


def _duktape_problems(source: str, tokens: list[_Token], flagged: set[int]) -> list[str]:
    """Duktape's SyntaxError (unless on a line already explained) and the built-in members the
    source calls that Duktape lacks (``Object.entries``), checked in a throwaway context."""
    if "\x00" in source:
        return ["the source contains a NUL character"]
    try:
        import pyduktape2
    except ImportError:
        return [INSTALL_HINT]
    members = _builtin_members(tokens)
    context = pyduktape2.DuktapeContext()
    try:
        context.set_globals(SOURCE=source, MEMBERS=json.dumps(list(members)))
    except UnicodeEncodeError:
        return ["the source is not valid Unicode text (a lone surrogate?)"]
    verdict = json.loads(context.eval_js(_CHECK))
    problems = []
    if error := verdict["error"]:
        line = re.search(r" \(line (\d+)(?:, end of input)?\)$", error)
        if line is None:
            problems.append(error)
        elif int(line.group(1)) not in flagged:
            problems += _render({error[: line.start()]: [int(line.group(1))]})
    missing = {MISSING_MEMBER.format(name=name): members[name] for name in verdict["missing"]}
    return problems + _render(missing)


_CHECK = """(function (global) {
  var verdict = {error: '', missing: []}, members = JSON.parse(MEMBERS);
  try { new Function(SOURCE); } catch (e) { verdict.error = e.name + ': ' + e.message; }
  for (var i = 0; i < members.length; i++) {
    var parts = members[i].split('.');
    if (typeof global[parts[0]][parts[1]] === 'undefined') verdict.missing.push(members[i]);
  }
  return JSON.stringify(verdict);
})(this)"""


def _builtin_members(tokens: list[_Token]) -> dict[str, list[int]]:
    """``Object.entries`` and the like → lines, unless the source assigns them (a polyfill)."""
    members: dict[str, list[int]] = {}
    assigned = set()
    for i, token in enumerate(tokens[:-2]):
        if token.kind == "name" and token.text in BUILTINS and tokens[i + 1].text == ".":
            if _text(tokens, i - 1) in (".", "?.") or tokens[i + 2].kind != "name":
                continue
            name = f"{token.text}.{tokens[i + 2].text}"
            if _text(tokens, i + 3) == "=":
                assigned.add(name)
            members.setdefault(name, []).append(token.line)
    return {name: lines for name, lines in members.items() if name not in assigned}


def _render(found: dict[str, list[int]]) -> list[str]:
    """``line 3: …`` / ``lines 3, 7: …``, in the order found."""
    rendered = []
    for construct, lines in found.items():
        lines = sorted(set(lines))
        shown = ", ".join(str(line) for line in lines[:5]) + (", …" if len(lines) > 5 else "")
        rendered.append(f"line{'s' if len(lines) > 1 else ''} {shown}: {construct}")
    return rendered


def _text(tokens: list[_Token], i: int) -> str:
    return tokens[i].text if 0 <= i < len(tokens) else ""


def _kind(tokens: list[_Token], i: int) -> str:
    return tokens[i].kind if 0 <= i < len(tokens) else ""
