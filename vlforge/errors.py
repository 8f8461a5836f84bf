"""The one exception type for mistakes a user can make (bad input, unknown reference, wrong config).

The CLI prints its message as one line and exits with code 2; anything else that escapes is a bug and
keeps its traceback."""


class UserError(Exception):
    """A mistake in what the user asked for; the message names the input and what is wrong."""
