"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user: a message that says what was wrong and what to do."""
