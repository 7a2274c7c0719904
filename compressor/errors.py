"""The exceptions a user sees as one line: what went wrong and how to fix it.

Primitives (pure math) raise plain exceptions; the method and CLI layers turn the ones a
user can fix into these. The CLI prints them as one line and exits 2, no traceback.
"""


class UserError(Exception):
    """A bad input: the message names the problem and the fix. Exit code 2, no traceback."""


class MissingStatistic(UserError):
    """A method needs a calibration statistic the pipeline did not collect (the one error
    type for this everywhere: gram, act_absmean, Fisher sums, gradients)."""
