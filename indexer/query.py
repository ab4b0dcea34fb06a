"""The door from the dashboard into the indexer: a dataset's model rebuilt from its provenance, and one picture
decoded and embedded through it exactly as the indexer embeds a file (`decode_image`, the model's transform,
`embed_pixels`), so its vector is comparable with the stored ones.

The dashboard imports nothing else of the indexer. Torch and timm are imported only when a model is built or runs
(in a background job), never by the web server that imports this module.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from db.errors import DinoscopeError
from indexer.decode import DecodedImage, UnreadableImage, decode_image
from indexer.scan import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from PIL import Image

    from indexer.model import LoadedModel

__all__ = ["IMAGE_SUFFIXES", "DecodedImage", "ModelUnavailable", "QueryModel", "QueryModels", "QueryRefused",
           "RecordedModel", "UnreadableImage", "decode_image"]


class QueryRefused(DinoscopeError):
    """The upload cannot be compared with the dataset; the message says why in one line."""


class ModelUnavailable(QueryRefused):
    """The dataset's exact model cannot be rebuilt on this server (its weights are missing or differ)."""


@dataclass(frozen=True)
class RecordedModel:
    """What a dataset's images were embedded with, as its provenance records it."""

    name: str
    weights_kind: str
    weights_identity: str
    weights_source: str | None
    image_size: int
    precision: str

    @property
    def key(self) -> tuple:
        """Equal for datasets whose vectors come from the same network run the same way (bf16 casts the model, int8
        quantises it)."""
        return self.name, self.weights_identity, self.image_size, self.precision


@dataclass(frozen=True)
class QueryModel:
    """A dataset's model rebuilt, on its device and in its precision, ready to embed pictures."""

    loaded: LoadedModel
    network: object  # the torch module from inference_model
    device: object  # the torch device it runs on
    precision: str

    def embed(self, rgb: Image.Image) -> np.ndarray:
        """The CLS embedding (float32, D) of one decoded picture, as the indexer's embed_files computes it."""
        from indexer.embed import embed_pixels

        pixels = self.loaded.transform(rgb).unsqueeze(0)
        cls, _ = embed_pixels(self.network, pixels, self.loaded, self.device, self.precision)
        return cls[0]


class QueryModels:
    """The models that embed uploads in this process: each built on first use, at most `capacity` kept.

    One belongs to the app. Background jobs receive it pickled, as an empty copy: under the diskcache manager every
    job is a new process, so a model is built once per upload there; a Celery worker keeps its models for its life.
    """

    def __init__(self, capacity: int = 1) -> None:
        self._capacity = capacity
        self._models: OrderedDict[tuple, QueryModel] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"capacity": self._capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])

    def holds(self, recorded: RecordedModel) -> bool:
        return recorded.key in self._models

    def get(self, recorded: RecordedModel, on_build: Callable[[], None] = lambda: None) -> QueryModel:
        """The dataset's model; `on_build` is called first when it has to be built."""
        with self._lock:  # one build at a time: two requests for the same model must not build it twice
            found = self._models.get(recorded.key)
            if found is None:
                on_build()
                found = _rebuild(recorded)
                self._models[recorded.key] = found
                while len(self._models) > self._capacity:
                    self._models.popitem(last=False)
            self._models.move_to_end(recorded.key)
            return found


def _rebuild(recorded: RecordedModel) -> QueryModel:
    from indexer.model import ModelError, inference_model, load_model, recorded_weights, resolve_device

    weights = recorded_weights(recorded.weights_kind, recorded.weights_identity, recorded.weights_source)
    try:
        loaded = load_model(recorded.name, weights, recorded.image_size)
    except ModelError as error:
        raise ModelUnavailable(f"This dataset's model cannot be rebuilt on this server, so uploads cannot be "
                               f"compared with its images: {error}") from None
    if loaded.weights.identity != recorded.weights_identity:
        raise ModelUnavailable(
            f"The weights on this server ({loaded.weights.identity}) are not the ones this dataset was indexed "
            f"with ({recorded.weights_identity}), so uploads cannot be compared with its images: restore those "
            f"weights{' at ' + recorded.weights_source if recorded.weights_kind == 'file' else ''}, or index the "
            "dataset again")
    device = resolve_device("cpu" if recorded.precision == "int8" else "auto")  # int8 runs on the CPU only
    return QueryModel(loaded, inference_model(loaded, device, recorded.precision), device, recorded.precision)
