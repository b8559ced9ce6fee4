"""The JavaScript worker process: runs one pipeline's ``transform`` in Duktape, batch by batch.

Started by ``javascript.JavaScriptTransformer`` as ``python -P _js_worker.py PROGRESS_FD MEMORY_MB
PARENT_PID``, never imported by it: a fresh interpreter inherits no Duktape context, lock or
thread from the (forked) Airflow task process. It imports nothing but the standard library and
pyduktape2, so it starts fast and never pulls in Airflow.

Protocol, on stdin/stdout (the original fd 1; fd 1 itself is pointed at stderr so that nothing
else can write into the channel, e.g. Duktape's ``print``). Every frame is a kind byte, a 4-byte
big-endian length and a UTF-8 body:

* parent → worker: the source first, then one JSON array of profiles per batch;
* worker → parent: ``R`` (ready, after the source; then one JSON array of results per batch),
  ``X`` (results, possibly fewer than the batch, then exit: Duktape ran out of memory and its heap
  may be full of what the source leaked; the parent runs the rest in a fresh worker),
  ``L`` (the source failed to load: message) or ``E`` (the worker is broken: message, then exit).

A result is the payload object, or a string: the reason that profile is rejected.

Progress: before each profile the worker writes its index into an 8-byte shared mapping
(``PROGRESS_FD``), so that when the parent kills a runaway or the process dies, the parent knows
which profile was running without any message from the worker.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import resource
import struct
import sys
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct("!cI")
LOADING = -2  # progress value while the source's top-level code runs

# The harness is evaluated before the user's source, so it keeps the real JSON, Array, Object
# and Duktape functions even if the source replaces them. ``bind`` is called after the source ran.
# Characters outside the BMP arrive as one code point each (raw UTF-8 in), which JSON.stringify
# writes back as valid UTF-8; but UTF-16 surrogates the source makes itself ("\ud83d\ude80", the
# only way ES5 can spell an emoji) come out as CESU-8, which pyduktape2 turns into U+FFFD. Rather
# than scan every batch for them, the worker asks for the last result again with the surrogates
# \u-escaped (``run(null)``) when it sees U+FFFD in a result.
HARNESS = r"""
(function (global) {
  var parse = JSON.parse, stringify = JSON.stringify, isArray = Array.isArray, keys = Object.keys;
  var prototypeOf = Object.getPrototypeOf, OBJECT = Object.prototype;
  var MAX_OUTPUT = 65536, SURROGATES = /[\ud800-\udfff]/g;
  // Objects nested this deep are checked part by part (shipping: {address: {city: …}}); a deeper
  // one cannot be a Stripe field: it is passed on, and the transform step rejects it.
  var MAX_NESTING = 2;

  function escapeSurrogate(unit) {
    return '\\u' + unit.charCodeAt(0).toString(16);
  }

  function describe(error) {
    if (typeof error === 'string') return error;
    if (error instanceof Error) {
      var line = typeof error.lineNumber === 'number' ? ' (line ' + error.lineNumber + ')' : '';
      return error.name + ': ' + error.message + line;
    }
    try { return 'threw ' + stringify(error); } catch (ignored) { return 'threw ' + String(error); }
  }

  function kind(value) {
    if (value === null) return 'null';
    if (isArray(value)) return 'an array';
    return typeof value === 'object' ? 'an object' : typeof value;
  }

  // The common case, kept cheap: an object of strings, finite numbers, booleans and nulls.
  function plain(output) {
    if (output === null || typeof output !== 'object' || isArray(output)) return false;
    for (var field in output) {
      var value = output[field], type = typeof value;
      if (!(type === 'string' || value === null || type === 'boolean' || (type === 'number' && isFinite(value)))) {
        return false;
      }
    }
    return true;
  }

  function valueProblem(value) {
    var type = typeof value;
    if (value === null || type === 'boolean' || type === 'string') return null;
    if (type === 'number') return isFinite(value) ? null : 'is ' + value + '; only finite numbers can be sent';
    if (type === 'undefined') return 'is undefined (a property the profile does not have?); use null to clear a field';
    return 'is ' + kind(value) + '; a field takes a string, number, boolean or null';
  }

  // A plain {…} (not a Date, a RegExp or an instance of a class, which JSON would turn into
  // something else): the nested form of a hash such as address: {city: …}.
  function isPlainObject(value) {
    if (value === null || typeof value !== 'object' || isArray(value)) return false;
    var proto = prototypeOf(value);
    return proto === OBJECT || proto === null;
  }

  // Why the fields of an object are wrong (null: they are fine, e.g. a list of locales); the
  // fields of a nested object are named by their dotted path (address.city).
  function fieldsProblem(object, prefix, nesting) {
    var fields = keys(object);
    for (var i = 0; i < fields.length; i++) {
      var name = prefix + fields[i], value = object[fields[i]], problem;
      if (isArray(value)) {
        for (var j = 0; j < value.length; j++) {
          if (isArray(value[j]) || (problem = valueProblem(value[j]))) {
            return 'field "' + name + '": item ' + j + ' ' + (problem || 'is an array');
          }
        }
      } else if (isPlainObject(value)) {
        if (nesting < MAX_NESTING && (problem = fieldsProblem(value, name + '.', nesting + 1))) return problem;
      } else if ((problem = valueProblem(value))) {
        return 'field "' + name + '" ' + problem;
      }
    }
    return null;
  }

  // The output as JSON; an object nested past MAX_NESTING may hold a cycle, which is the
  // profile's problem, not a line of this harness.
  function serialise(output) {
    try {
      return stringify(output);
    } catch (error) {
      if (error instanceof Error && error.message === 'alloc failed') throw error;
      return stringify('the output cannot be turned into JSON: ' + (error instanceof Error ? error.message : String(error)));
    }
  }

  // Why an output that is not plain is wrong (null: it is fine, e.g. nested or a list of locales).
  function outputProblem(output) {
    if (output === null || typeof output !== 'object' || isArray(output)) {
      return 'transform must return an object of Stripe fields such as {"name": …}, not ' + kind(output);
    }
    return fieldsProblem(output, '', 0);
  }

  return function bind(tick, memoryLimit) {
    var transform = global.transform;
    if (typeof transform !== 'function') return null;
    var last = '';
    return function run(batch) {
      if (batch === null) return last.replace(SURROGATES, escapeSurrogate);
      var profiles = parse(batch), parts = [];
      for (var i = 0; i < profiles.length; i++) {
        tick(i);
        var part, output, problem;
        try {
          output = transform(profiles[i]);
          problem = plain(output) ? null : outputProblem(output);
          part = problem === null ? serialise(output) : stringify(problem);
          if (part.length > MAX_OUTPUT) part = stringify('the output is larger than 64 KiB');
        } catch (error) {
          if (error instanceof Error && error.message === 'alloc failed') {
            // The heap may be full of garbage the source leaked: the parent replaces this worker.
            parts.push(stringify('ran out of memory (limit ' + memoryLimit + ')'));
            return (last = '![' + parts.join(',') + ']');
          }
          part = stringify(describe(error));
        }
        parts.push(part);
      }
      return (last = '[' + parts.join(',') + ']');
    };
  };
})(this)
"""

# What the source must not reach: ``require`` reads files; modSearch is its loader.
LOCKDOWN = "delete this.require; delete Duktape.modSearch; delete Duktape.modLoaded;"


# The one exception class outside krenalis_airflow.exceptions: this file runs as its own
# interpreter that imports only the standard library (and pyduktape2), and LoadError never leaves
# it: its message goes back as an ``L`` frame, and the parent raises ``TransformationUnusable``.
class LoadError(Exception):
    """The source cannot be used: it does not compile, its top level throws, or no transform."""


def main(argv: list[str]) -> int:
    progress_fd, memory_mb, parent = int(argv[1]), int(argv[2]), int(argv[3])
    _die_with_parent(parent)
    channel = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    shared = mmap.mmap(progress_fd, 8)
    os.close(progress_fd)
    progress = memoryview(shared).cast("q")

    source = _read_frame()
    if source is None:
        return 0
    progress[0] = LOADING

    def tick(index: int) -> None:
        progress[0] = index

    try:
        run = _load(source, memory_mb, tick)
    except LoadError as exc:
        _write_frame(channel, b"L", str(exc))
        return 0
    _write_frame(channel, b"R", "")
    while (batch := _read_frame()) is not None:
        try:
            results = run(batch)
            if "\ufffd" in results:  # maybe surrogates garbled by pyduktape2: ask for them escaped
                results = run(None)
        except BaseException as exc:  # report, then die: pyduktape2 is not to be trusted after this
            _write_frame(channel, b"E", _first_line(exc))
            return 1
        if results.startswith("!"):
            _write_frame(channel, b"X", results[1:])
            return 0
        _write_frame(channel, b"R", results)
    return 0


def _load(source: str, memory_mb: int, tick: Callable[[int], None]) -> Callable[[str | None], str]:
    """Evaluate the source in a locked-down context, under the memory limit."""
    try:
        import pyduktape2
    except ImportError as exc:
        raise LoadError("pyduktape2 is not installed; pip install 'krenalis-airflow[javascript]'") from exc
    context = pyduktape2.DuktapeContext()
    context.eval_js(LOCKDOWN)
    bind = context.eval_js(HARNESS)
    _limit_memory(memory_mb)
    try:
        context.eval_js(source)
        run: Any = bind(tick, f"{memory_mb} MB")
    except pyduktape2.JSError as exc:
        raise LoadError(_first_line(exc)) from exc
    if run is None:
        raise LoadError("the source must define function transform(profile)")
    return run


def _limit_memory(memory_mb: int) -> None:
    """Cap the address space at what the process uses now plus ``memory_mb``.

    Duktape then fails an allocation with ``Error: alloc failed``, which the harness turns into a
    rejection; a failure where Duktape cannot throw kills the process, which the parent handles.
    """
    try:
        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        used = 0
    limit = used + memory_mb * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):  # not enforceable (macOS): the parent copes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _die_with_parent(parent: int) -> None:
    """On Linux, get SIGKILL when the parent dies: a runaway script never reads stdin's EOF."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _read_frame() -> str | None:
    header = _read_exactly(HEADER.size)
    if header is None:
        return None
    _, length = HEADER.unpack(header)
    body = _read_exactly(length)
    return None if body is None else body.decode()


def _read_exactly(size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(0, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_frame(fd: int, kind: bytes, text: str) -> None:
    body = text.encode("utf-8", "replace")
    data = memoryview(HEADER.pack(kind, len(body)) + body)
    while data:
        data = data[os.write(fd, data) :]


def _first_line(exc: BaseException) -> str:
    """JSError messages carry a Duktape stack trace of C source lines; the first line is the news."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
