"""The door from the dashboard into the indexer for index runs: `run_index_job` indexes a folder into a dataset with
the server's model, as a background job of the dashboard (the job server's `indexing` lane, or a Celery worker),
reporting its progress as it goes and returning its summary as plain data.

The dashboard imports nothing else of the indexer for this. Torch and timm are imported only when the job runs,
never by the web server that imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from db.errors import DinoscopeError

__all__ = ["ServerModel", "run_index_job"]


@dataclass(frozen=True)
class ServerModel:
    """The model a dashboard indexes with (`serve --model/--weights/--random-weights/--image-size`). None, as for
    `dinoscope index`: the dataset's own, or the default for a new dataset (hub weights)."""

    name: str | None = None
    weights: Path | None = None
    random_weights: bool = False
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and self.random_weights:
            raise ValueError("a weights file and random weights exclude each other: choose one")


def run_index_job(db_url: str, folder: str | Path, dataset: str, model: ServerModel,
                  progress: Callable[[dict], None] | None = None, uploaded_set: tuple[str, str | None] | None = None
                  ) -> dict:
    """Index `folder` into `dataset` on the database `db_url`, in this process (decoding included: a job's process
    may not start others). `progress` is given {"done", "total", "images_per_second", "seconds_left"} after the
    run has planned and after each batch. Returns the summary: {"dataset", "refused": None, "added", "updated",
    "unchanged", "moved", "removed", "failed", "failures": [[relpath, reason], ...], "embedded",
    "images_per_second", "seconds", "notes"}; or, when the run is refused or fails on purpose (another run of the
    dataset is running, a model that differs from the dataset's...), {"dataset", "refused": the message}.
    `uploaded_set`: (set id, owner) of the image set that `folder` is, recorded with the dataset it creates; a
    dataset of that name that is not this set's refuses the run."""
    from dataclasses import asdict

    from db.engine import open_database
    from indexer.model import WeightsChoice
    from indexer.run import IndexRequest, UploadedSetRef, index_folder

    weights = (WeightsChoice("file", model.weights) if model.weights else WeightsChoice("random")
               if model.random_weights else None)
    request = IndexRequest(Path(folder), dataset, model.name, weights, model.image_size, workers=0,
                           uploaded_set=UploadedSetRef(*uploaded_set) if uploaded_set else None)
    report = (lambda step: progress(asdict(step))) if progress else None
    database = open_database(db_url)
    try:
        summary = index_folder(database, request, show_progress=False, progress=report)
    except DinoscopeError as refused:
        return {"dataset": dataset, "refused": str(refused)}
    finally:
        database.dispose()
    return {"dataset": summary.dataset, "refused": None, "added": summary.added, "updated": summary.updated,
            "unchanged": summary.unchanged, "moved": summary.moved, "removed": summary.removed,
            "failed": summary.failed, "failures": [list(failure) for failure in summary.failures],
            "embedded": summary.embedded, "images_per_second": summary.images_per_second,
            "seconds": summary.seconds, "notes": list(summary.notes)}
