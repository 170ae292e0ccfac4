"""The two kinds of error the command line distinguishes.

``UsageError`` is bad usage or bad input (exit code 2); ``RunError`` is a failure while running
(exit code 1). Messages are one line that names the option or file, the bad value and what is
expected, e.g. ``--size: 5000 is more than the source 'digits' holds (1797 images)``.
"""


class DiffmemError(Exception):
    exit_code = 1


class UsageError(DiffmemError, ValueError):
    """Bad usage or bad input: exit code 2."""

    exit_code = 2


class RunError(DiffmemError, RuntimeError):
    """A failure while running: exit code 1."""

    exit_code = 1


def bad(option: str, value: object, expected: str) -> UsageError:
    """One-line usage error naming the option, the value and what is expected."""
    return UsageError(f"{option}: {value!r} is not valid; expected {expected}")
