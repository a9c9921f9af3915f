"""The one exception a user can fix (a bad path, a malformed file, an impossible flag); imports nothing.

Scripts print a UserError as one line, without a traceback (utils.run_main), so every module that can meet bad input
raises it: the network modules and the data modules import it from here, not from the command-line module."""


class UserError(ValueError):
    """A problem the user can fix; its message names the file, line or value and says what to do."""
