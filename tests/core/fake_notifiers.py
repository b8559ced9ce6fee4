"""Notifiers without Airflow, for the spec's ``alerts.notifier`` checks (``notifier_problem``)."""

from __future__ import annotations

from typing import Any


class ChannelNotifier:
    """Shaped like Slack's: a channel and the text, both templated."""

    template_fields = ("channel", "text")

    def __init__(self, *, channel: str, text: str = "", conn_id: str = "slack") -> None:
        self.channel, self.text, self.conn_id = channel, text, conn_id

    def __call__(self, context: dict[str, Any]) -> None:
        """Nothing is sent: the spec checks only build and call it."""


def page(context: dict[str, Any], *, message: str, team: str = "data") -> None:
    """A notifier function: called with the context and the spec's args."""


NOT_CALLABLE = 42
