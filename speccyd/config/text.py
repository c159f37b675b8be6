"""Errors as sentences people read: never Python's raw "[Errno 2] No such file or directory: '/x'"."""

from __future__ import annotations


def describe(error: BaseException) -> str:
    """An OSError as "<what went wrong> (<the path>)"; anything else as its own message."""
    if isinstance(error, OSError) and error.strerror:
        what = error.strerror[0].lower() + error.strerror[1:]
        paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
        return f"{what} ({' -> '.join(paths)})" if paths else what
    return str(error) or type(error).__name__
