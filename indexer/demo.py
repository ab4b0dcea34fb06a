"""`dinoscope demo`: the quick start in one command, the indexer's run composed with the dashboard's `serve`.

The root group loads this module only when `demo` is run or listed, as it imports the dashboard's command line.
"""

from __future__ import annotations

from pathlib import Path

import click

from dashboard.cli import serve_dashboard, server_options
from db.cli_options import db_option
from indexer.cli import default_decode_workers, echo_summary


@click.command()
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), default=Path("dinoscope-samples"),
              show_default=True, help="Where to copy the sample photographs.")
@db_option
@click.option("--random-weights", is_flag=True, help="Index with random weights (machines without the model hub).")
@click.option("--uploads/--no-uploads", default=True, show_default=True,
              help="Let the dashboard's users add image sets of their own, indexed as the samples were.")
@server_options
def demo(folder, db, random_weights, uploads, host, port, cache_dir, workers):
    """Copy the sample photographs, index them as the dataset `samples`, and serve the dashboard."""
    from dashboard.settings import Settings, UploadSettings
    from db import open_database
    from db.engine import resolve_url
    from indexer.index_job import ServerModel
    from indexer.model import WeightsChoice
    from indexer.run import IndexRequest, index_folder
    from indexer.samples import copy_samples

    copy_samples(folder)
    request = IndexRequest(folder, "samples", weights=WeightsChoice("random") if random_weights else None,
                           workers=default_decode_workers())
    echo_summary(index_folder(open_database(db), request))
    serve_dashboard(Settings.from_env(db, cache_dir, uploads=UploadSettings.from_env(resolve_url(db), uploads),
                                      index_model=ServerModel(random_weights=random_weights)), host, port, workers)
