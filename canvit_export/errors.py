"""The one exception the CLI turns into a one-line message and a non-zero exit."""


class ExportError(Exception):
    """Bad input or an unmet requirement; the message names the fix in one line."""
