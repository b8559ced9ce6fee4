"""Real Airflow notifiers for the alert tests: one records every call in a file, one always fails."""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseNotifier


class RecordingNotifier(BaseNotifier):
    """Appends one JSON line per alert to ``path``: the rendered text and subject, the alert's
    kind and figures, and the DAG run it came from."""

    template_fields = ("text", "subject")

    def __init__(self, *, path: str, text: str = "", subject: str = "") -> None:
        super().__init__()
        self.path, self.text, self.subject = path, text, subject

    def notify(self, context: Any) -> None:
        """Record the call."""
        alert = context["krenalis_alert"]
        ti = context.get("ti")
        line = {
            "text": self.text,
            "subject": self.subject,
            "kind": alert["kind"],
            "title": alert["title"],
            "figures": alert["figures"],
            "dag_id": getattr(ti, "dag_id", None),
            "run_id": context.get("run_id"),
        }
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line, default=str) + "\n")


class FailingNotifier(BaseNotifier):
    """A notifier whose service is down."""

    def __init__(self, *, text: str = "") -> None:
        super().__init__()
        self.text = text

    def notify(self, context: Any) -> None:
        """Fail, as an unreachable Slack would."""
        raise ConnectionError("notification service unreachable")


def read_alerts(path: Any) -> list[dict[str, Any]]:
    """The calls ``RecordingNotifier`` recorded in ``path`` (none when it was never called)."""
    try:
        with open(path, encoding="utf-8") as stream:
            return [json.loads(line) for line in stream if line.strip()]
    except FileNotFoundError:
        return []
