"""The one exception type for user mistakes.

Raise :class:`UsageError` for anything the user can fix (a bad recipe key, a missing folder, an unknown model): the
CLI prints it as one line, ``inat-zoo: error: <message>``, and exits with status 2, without a traceback unless
``--debug`` is given. Bugs stay ordinary exceptions and keep their traceback.
"""


class UsageError(Exception):
    """A mistake in the user's input; the message names what is wrong and where."""
