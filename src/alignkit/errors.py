"""User-facing errors: the CLI prints them as one clear message and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us (a flag, a config file, a data record, a model path).

    The CLI prints ``str(error)`` without a traceback and exits with status 2.
    """


class DataError(UserError):
    """One or more bad data records; ``problems`` lists ``file:line: message`` strings."""

    def __init__(self, problems: list[str], max_shown: int = 20):
        self.problems = list(problems)
        shown = self.problems[:max_shown]
        more = len(self.problems) - len(shown)
        text = "\n".join(shown)
        if more > 0:
            text += f"\n... and {more} more problem(s)"
        super().__init__(f"invalid data ({len(self.problems)} problem(s)):\n{text}")
