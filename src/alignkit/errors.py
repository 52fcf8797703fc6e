"""User-facing errors: the CLI prints them as one clear message and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us (a flag, a config file, a data record, a model path).

    The CLI prints ``str(error)`` without a traceback and exits with status 2.
    """


def disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, says the disk is full: an ``OSError``
    with ENOSPC, or a library's own error that only quotes it (safetensors writes "No space left
    on device (os error 28)" in a ``SafetensorError``)."""
    import errno

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "os error 28" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def in_file_order(problems: list[str]) -> list[str]:
    """``file:line: message`` strings sorted by line within each file, files in the order they
    first appear; problems of one line, and any without a line number, keep their order."""
    import re

    files: dict[str, int] = {}
    keys = []
    for i, text in enumerate(problems):
        m = re.match(r"(.*?):(\d+): ", text)
        source, line = (m.group(1), int(m.group(2))) if m else (f"#{i}", 0)
        keys.append((files.setdefault(source, len(files)), line))
    return [p for _, p in sorted(zip(keys, problems), key=lambda kp: kp[0])]


class DataError(UserError):
    """One or more bad data records; ``problems`` lists ``file:line: message`` strings, kept in
    file order (a reader's problems and the field problems of other lines come out interleaved,
    as a user fixing the file top to bottom meets them)."""

    def __init__(self, problems: list[str], max_shown: int = 20):
        self.problems = in_file_order(list(problems))
        shown = self.problems[:max_shown]
        more = len(self.problems) - len(shown)
        text = "\n".join(shown)
        if more > 0:
            text += f"\n... and {more} more problem(s)"
        super().__init__(f"invalid data ({len(self.problems)} problem(s)):\n{text}")
