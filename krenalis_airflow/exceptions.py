"""Exception types, split by what a person (or Airflow) should do about them.

* ``SpecError``: the pipeline spec is wrong; fix the YAML. Never retried.
* ``TerminalSyncError``: retrying cannot help (bad key, missing permission, a broken
  transformation); the task fails at once without Airflow retries.
* ``RetryableSyncError``: Stripe or the network failed transiently (429, 5xx, timeouts);
  Airflow's retries (and the next run) pick the work up again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class KrenalisError(Exception):
    """Base class of every error raised by krenalis_airflow."""


@dataclass(frozen=True)
class SpecProblem:
    """One problem in one spec: where it is, what is wrong, and what is allowed."""

    path: str  # key path, e.g. "export.matching.stripe"
    message: str
    line: int | None = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class SpecError(KrenalisError):
    """A pipeline spec is invalid. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: Sequence[SpecProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [p.render(source) for p in self.problems]
        super().__init__("invalid pipeline spec\n" + "\n".join(f"  {line}" for line in lines))


class UnsendablePayload(KrenalisError):
    """A payload that no request Stripe accepts can express (e.g. clearing ``preferred_locales``,
    a shipping hash without a name): the profile is rejected before anything is sent."""


class TransformError(KrenalisError):
    """A transformation failed for one profile; the profile is rejected, the run goes on."""


class SyncError(KrenalisError):
    """Base class of failures talking to Stripe."""


class TerminalSyncError(SyncError):
    """Retrying cannot help: wrong or under-privileged key, an unusable configuration."""


class RetryableSyncError(SyncError):
    """A transient failure (rate limit, 5xx, network): retry later."""
