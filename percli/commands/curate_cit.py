"""`percli curate cit` (being built: issue 4)."""

from percli.commands.run import fail


def cit() -> None:
    """CiT (being built)."""
    fail("not built yet")
