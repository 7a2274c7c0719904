"""One exception type for every mistake a user can fix; the CLI prints it as one line."""


class UserError(Exception):
    """A bad input: the message names the problem and the fix. Exit code 2, no traceback."""
