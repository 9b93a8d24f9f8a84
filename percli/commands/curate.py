"""`percli curate ...`: build a training set out of a raw image-text pool.

Each curator lives in its own command module; this one only assembles the `curate` group.
"""

from __future__ import annotations

import typer

from percli.commands import curate_cit, curate_metaclip, curate_mode, curate_text_quality

curate_app = typer.Typer(help="Curate image-text data (MetaCLIP, CiT, MoDE, text quality).", no_args_is_help=True)
curate_app.add_typer(curate_metaclip.metaclip_app, name="metaclip")
curate_app.command("cit")(curate_cit.cit)
curate_app.command("mode")(curate_mode.mode)
curate_app.command("text-quality")(curate_text_quality.text_quality)
