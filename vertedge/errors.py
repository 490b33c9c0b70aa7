"""The one error type the tool raises for bad input or an impossible request."""


class VertedgeError(Exception):
    """A user-facing failure: its message is one line naming the file and the reason."""
