"""The one exception the CLI turns into a one-line message and a non-zero exit.

It is canvit_runtime's (a ValueError), so that the artifact writing both distributions share raises one class.
"""

from canvit_runtime.artifact import ExportError

__all__ = ["ExportError"]
