"""The one exception type the engine raises for problems a user can fix."""


class UserError(Exception):
    """Bad input or settings: the message is one line that names the problem and the fix."""
