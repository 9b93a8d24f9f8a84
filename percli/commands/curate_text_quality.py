"""`percli curate text-quality` (being built: issue 4)."""

from percli.commands.run import fail


def text_quality() -> None:
    """text-quality pruning (being built)."""
    fail("not built yet")
