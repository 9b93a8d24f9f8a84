"""`percli curate mode` (being built: issue 4)."""

from percli.commands.run import fail


def mode() -> None:
    """MoDE (being built)."""
    fail("not built yet")
