"""The one exception type the engine raises for problems a user can fix, and any error as one line."""


class UserError(Exception):
    """Bad input or settings: the message is one line that names the problem and the fix."""


def message_line(error: BaseException, limit: int = 300, first: bool = False) -> str:
    """One line of ``error``'s message, stripped and cut at ``limit`` characters: the last non-blank one (that of
    SimpleITK's exceptions, whose first lines name source files; that of torch's, which end in the detail), or the
    first with ``first``; the error's type name when its message is blank."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return (lines[0] if first else lines[-1])[:limit]


def error_line(error: BaseException) -> str:
    """An error as one line: a ``UserError``'s message, else its type and the last line of its message
    (``message_line``), or its type alone when the message is blank."""
    if isinstance(error, UserError):
        return str(error)
    return f"{type(error).__name__}: {message_line(error)}" if str(error).strip() else type(error).__name__
