"""`percli curate metaclip build-metadata` (being built: issue 4)."""

from percli.commands.run import fail


def build_metadata() -> None:
    """Build MetaCLIP metadata (being built)."""
    fail("not built yet")
