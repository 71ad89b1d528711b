"""The one exception type the engine raises for problems a user can fix, and any error as one line."""


class UserError(Exception):
    """Bad input or settings: the message is one line that names the problem and the fix."""


def error_line(error: BaseException) -> str:
    """An error as one line: a ``UserError``'s message, else its type and the last line of its message (that of
    SimpleITK's exceptions, whose first lines name source files; that of torch's, which end in the detail)."""
    if isinstance(error, UserError):
        return str(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1][:300]}" if lines else type(error).__name__
