"""Every exception class of krenalis_airflow, grouped by what a person (or Airflow) should do.

The map (dlt-style: the group says the action, the class says the cause)::

    KrenalisError                          base of everything the package raises to its callers
    ├── TerminalError                      retrying cannot help: Airflow fails the task, no retries
    │   ├── ConfigError                    a person must change the configuration first
    │   │   ├── SpecError                  the spec's YAML is wrong (every SpecProblem at file:line)
    │   │   ├── BrokenPipelineSpecs        the DAG-file report of every spec that does not load
    │   │   ├── TransformationUnusable     the spec's user code cannot load: a Python import fails,
    │   │   │                              the pyduktape2 extra is missing, the JS source is bad
    │   │   ├── ConnectionUnusable         a named Airflow connection cannot serve (not SQL, no key…)
    │   │   └── NotifierUnusable           the spec's alerts.notifier cannot be imported or called
    │   ├── TerminalSyncError (SyncError)  Stripe refuses the key itself (401) or a permission (403)
    │   └── RunFailed                      the run ended past export.max_rejected, or its files are gone
    │       └── TooManyLeaving             more profiles would leave than export.max_leave: nothing changed
    ├── RetryableError                     transient: Airflow's retries (and the next run) take over
    │   └── RetryableSyncError (SyncError) 429, 409, 5xx, network errors, once our retries are spent
    ├── RecordError                        one profile is rejected; the run goes on
    │   ├── RecordRejected                 Stripe refused this payload (400)
    │   │   └── CustomerMissing            the ledger's customer is gone from Stripe (404)
    │   ├── UnsendablePayload              no Stripe request can express this payload
    │   └── TransformError                 the transformation failed for this profile
    └── CommandError, InitError            the CLI's one-line reports (printed, exit status 1)

Why ``TransformationUnusable`` is a ``ConfigError`` and not a ``TerminalSyncError``: nothing
talked to Stripe. Code that does not import, a missing optional extra or JavaScript that does not
compile are fixed where the spec (or the deployment's packages) is fixed, exactly like a spec
error; only the moment differs (the transform task, or ``validate`` for references). It stays
apart from ``SpecError`` because it carries one message, not ``SpecProblem`` lines.

``SyncError`` is the base of the two Stripe failures, for code that handles "Stripe failed" as
one thing. The one place that turns this taxonomy into Airflow outcomes is
``krenalis_airflow.operators.errors.airflow_outcome``: ``TerminalError`` becomes
``AirflowFailException``; everything else propagates, so Airflow retries it.

Two internal carriers live here too, so every class is in one file: ``KeyedError`` (a
``ValueError``, as pydantic validators require; ``load_spec`` turns it into a ``SpecProblem``)
and ``FilterProblem`` (one filter condition's problem, collected into ``SpecProblem``s). Neither
ever leaves spec validation. The JavaScript worker's ``LoadError`` alone stays in
``core/transform/_js_worker.py``: that file runs as a separate interpreter that imports only the
standard library, and the error never leaves that process (it is sent back as an ``L`` frame,
and the parent raises ``TransformationUnusable``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class KrenalisError(Exception):
    """Base class of every error krenalis_airflow raises to its callers."""


class TerminalError(KrenalisError):
    """Retrying cannot help: the task fails at once, without Airflow retries."""


class RetryableError(KrenalisError):
    """A transient failure: raise it so Airflow's retries (and the next run) try again."""


# --------------------------------------------------------------------------------------------
# Spec and configuration errors: fix the YAML, the code it names, or a connection


class ConfigError(TerminalError):
    """The configuration is wrong (spec, user code, connection): a person must change it."""


@dataclass(frozen=True)
class SpecProblem:
    """One problem in one spec: where it is, what is wrong, and what is allowed."""

    path: str  # key path, e.g. "export.matching.stripe"
    message: str
    line: int | None = None

    def render(self, source: str) -> str:
        """The problem as ``file:line: path: message``, for ``source`` the spec file."""
        where = f"{source}:{self.line}" if self.line else source
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class SpecError(ConfigError):
    """A pipeline spec is invalid. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: Sequence[SpecProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [p.render(source) for p in self.problems]
        super().__init__("invalid pipeline spec\n" + "\n".join(f"  {line}" for line in lines))


class BrokenPipelineSpecs(ConfigError):
    """Raised by the DAG file ``krenalis_spec_check.py`` so Airflow lists broken specs as an import error."""


class TransformationUnusable(ConfigError):
    """The spec's transformation cannot load: a Python reference that does not import, inline code
    that does not run, the ``javascript`` extra (pyduktape2) not installed, or JavaScript source
    that does not compile. It would reject every profile, so the run stops before the first."""


class ConnectionUnusable(ConfigError):
    """An Airflow connection the spec names cannot serve its role: not a SQL connection, or a
    Stripe connection without a usable key, host or extras. Found before any request is sent."""


class NotifierUnusable(ConfigError):
    """The spec's ``alerts.notifier`` cannot be imported or called with its arguments (reported by
    ``validate``; when an alert fires, only logged: an alert never fails a run)."""


class KeyedError(ValueError):
    """A cross-field check's error that knows which key it is about (for the file:line report).

    A ``ValueError`` so that pydantic reports it from a model validator; never escapes
    ``load_spec``, which turns it into a ``SpecProblem``."""

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class FilterProblem(Exception):
    """One filter condition's problem: ``key`` is appended to the condition's key path.

    Raised and caught inside the filter builder (``core/filters.py``), which collects each one as a
    ``SpecProblem`` and raises them together in one ``SpecError``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


# --------------------------------------------------------------------------------------------
# Stripe failures: terminal (the key) or retryable (the service)


class SyncError(KrenalisError):
    """Base class of failures talking to Stripe."""


class TerminalSyncError(SyncError, TerminalError):
    """Stripe refuses the key (401) or one of its permissions (403): no retry can help."""


class RetryableSyncError(SyncError, RetryableError):
    """A transient failure (rate limit, 5xx, network): retry later."""


class RunFailed(TerminalError):
    """The run cannot succeed by retrying its task: more rejected profiles than
    ``export.max_rejected`` (fix the data), or its profile files are gone (clear the whole run)."""


class TooManyLeaving(RunFailed):
    """More profiles would leave the audience than ``export.max_leave`` allows (an emptied source
    table, a broken filter): raised before anything is written to Stripe or the ledger."""


# --------------------------------------------------------------------------------------------
# Per-record outcomes: the profile is rejected, the run goes on


class RecordError(KrenalisError):
    """One profile cannot be synced; it is rejected with this message and the run goes on."""


class RecordRejected(RecordError):
    """Stripe refused this one payload (400: invalid email, bad param); resending cannot help."""

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(f"{message} (param: {param})" if param else message)


class CustomerMissing(RecordRejected):
    """Stripe has no such customer (404): never created, or deleted."""


class UnsendablePayload(RecordError):
    """A payload that no request Stripe accepts can express (e.g. clearing ``preferred_locales``,
    a shipping hash without a name): the profile is rejected before anything is sent."""


class TransformError(RecordError):
    """A transformation failed for one profile; the profile is rejected, the run goes on."""


# --------------------------------------------------------------------------------------------
# The command line's reports


class CommandError(KrenalisError):
    """An expected failure of a local command (``preview``, ``plan``, ``validate --connect``),
    said in one line: the spec file, line and key, what is wrong, and the fix
    (``local_run.command_error`` finds the line)."""

    def __init__(self, source: str, problem: SpecProblem) -> None:
        self.source = source
        self.problem = problem
        super().__init__(problem.render(source))


class InitError(KrenalisError):
    """An expected failure of ``init``; the message says what to do, and nothing was written."""
