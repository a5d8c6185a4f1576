"""The one exception type gradpilot raises for input a user can fix."""


class GradpilotError(ValueError):
    """Bad input or an impossible request; the message says what was wrong and what to do."""
