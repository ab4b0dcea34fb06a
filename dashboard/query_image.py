"""Query by upload: a user's JPG or PNG, embedded exactly as the dataset's images were, to rank the dataset by.

The upload stays in memory from the callback request to the vector: it is decoded with the indexer's own
`decode_image`, preprocessed with the dataset's model transform and embedded by the dataset's model rebuilt from
its provenance, so its vector is comparable with the stored ones. Nothing of it is written anywhere.

Torch and timm are imported only when an upload is embedded (in a background job), never by the web server.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from db.engine import open_database
from db.errors import DinoscopeError
from db.queries import dataset_by_name, datasets_newest_first
from indexer.decode import DecodedImage, UnreadableImage, decode_image

if TYPE_CHECKING:
    from dashboard.data import DatasetStore
    from indexer.model import LoadedModel

MAX_UPLOAD_BYTES = 10 * 1024**2
# A PNG is decoded whole (a JPEG at a reduced scale): above this many pixels, a small file could take a job's
# memory into gigabytes (24 megapixels is 72 MB as RGB, about 300 MB at the most during conversion).
MAX_DECODED_PIXELS = 24_000_000
# Flask answers 413 to any larger request: an upload travels base64-encoded (4/3 of its size) in a callback's JSON.
MAX_REQUEST_BYTES = 16 * 1024**2
ACCEPTED_FORMATS = ("JPEG", "PNG")
UPLOAD_TYPES = ("image/jpeg", "image/png")  # what the browser lets through: the types of ACCEPTED_FORMATS


class QueryRefused(DinoscopeError):
    """The upload cannot be compared with the dataset; the message says why in one line."""


class UploadRefused(QueryRefused):
    """The file itself: too large, not an image, damaged, a decompression bomb, or not a JPG or PNG."""


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
        """Equal for datasets whose vectors come from the same network run the same way (bf16 casts the model)."""
        return self.name, self.weights_identity, self.image_size, self.precision


@dataclass(frozen=True)
class UploadEmbedding:
    width: int  # of the upload as displayed (after EXIF orientation)
    height: int
    format: str  # "JPEG" or "PNG"
    embedding: np.ndarray  # float32 (D,), the CLS token as the indexer stores it (not normalised)


def recorded_model(store: DatasetStore, dataset: str) -> RecordedModel:
    with store.database.session() as session:
        return _recorded(dataset_by_name(session, dataset))


def newest_recorded_models(db_url: str, count: int) -> list[RecordedModel]:
    """The distinct models of the most recently updated datasets, newest first, at most `count`."""
    database = open_database(db_url, readonly=True)
    try:
        with database.session() as session:
            found: dict[tuple, RecordedModel] = {}
            for dataset in datasets_newest_first(session):
                recorded = _recorded(dataset)
                found.setdefault(recorded.key, recorded)
                if len(found) == count:
                    break
    finally:
        database.dispose()
    return list(found.values())


def _recorded(dataset) -> RecordedModel:
    return RecordedModel(dataset.model_name, dataset.weights_kind, dataset.weights_identity, dataset.weights_source,
                         dataset.image_size, dataset.precision)


def upload_bytes(contents: str | None) -> bytes:
    """The file inside a dcc.Upload `contents` data URL; refused when larger than MAX_UPLOAD_BYTES, or not a data
    URL (whatever a crafted request sent)."""
    header, comma, payload = (contents if isinstance(contents, str) else "").partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise UploadRefused("The upload did not arrive as a file: choose a JPG or PNG file to upload")
    if len(payload) * 3 // 4 > MAX_UPLOAD_BYTES + 2:  # refused before decoding anything
        raise UploadRefused(_too_large(len(payload) * 3 // 4))
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UploadRefused("The upload arrived damaged (not valid base64): try uploading the file again") from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadRefused(_too_large(len(data)))
    return data


def _too_large(size: int) -> str:
    return (f"The file is {size / 1024**2:.1f} MB; uploads are limited to {MAX_UPLOAD_BYTES / 1024**2:.0f} MB: "
            "save a smaller copy (the model sees only a few hundred pixels anyway)")


def decode_upload(data: bytes, image_size: int) -> tuple[DecodedImage, str]:
    """The upload decoded as the indexer decodes a file for a model of `image_size` pixels, and its format.
    Its size is read from the header first: a picture that would decode to too many pixels is refused unread."""
    found, size = _image_header(data)
    if found is not None and found not in ACCEPTED_FORMATS:
        raise UploadRefused(f"This is a {found} image: upload a JPG or PNG")
    if found != "JPEG" and size is not None and size[0] * size[1] > MAX_DECODED_PIXELS:
        raise UploadRefused(
            f"This {found} is {size[0]} x {size[1]} pixels ({size[0] * size[1] / 1e6:.0f} megapixels); uploads "
            f"other than JPEG are limited to {MAX_DECODED_PIXELS / 1e6:.0f} megapixels: save a smaller copy (the "
            "model sees only a few hundred pixels anyway)")
    try:
        return decode_image(data, image_size), found
    except UnreadableImage as error:
        raise UploadRefused(f"This file cannot be used: {error} (upload a JPG or PNG)") from None


def _image_header(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """The format and size named in the file's header, read without decoding a pixel; (None, None) when Pillow
    cannot tell (decode_image then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.format, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None, None


class QueryModels:
    """The models that embed uploads in this process: each built on first use, at most `capacity` kept.

    One belongs to the app. Background jobs receive it pickled, as an empty copy: under the diskcache manager every
    job is a new process, so a model is built once per upload there; a Celery worker keeps its models for its life.
    """

    def __init__(self, capacity: int = 1) -> None:
        self._capacity = capacity
        self._models: OrderedDict[tuple, tuple[LoadedModel, object]] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"capacity": self._capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])

    def holds(self, recorded: RecordedModel) -> bool:
        return recorded.key in self._models

    def get(self, recorded: RecordedModel, on_build: Callable[[], None] = lambda: None) -> tuple[LoadedModel, object]:
        """(the model, the torch device it is on); `on_build` is called first when it has to be built."""
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


def _rebuild(recorded: RecordedModel) -> tuple[LoadedModel, object]:
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
    device = resolve_device("auto")
    inference_model(loaded, device, recorded.precision)
    return loaded, device


def embed_upload(models: QueryModels, recorded: RecordedModel, contents: str | None,
                 progress: Callable[[str], None] = lambda stage: None) -> UploadEmbedding:
    """The upload's embedding by the dataset's own model, decoding and preprocessing; QueryRefused says why not."""
    decoded, found = decode_upload(upload_bytes(contents), recorded.image_size)
    loaded, device = models.get(recorded, on_build=lambda: progress(f"Loading {recorded.name}…"))
    progress("Embedding the upload…")
    embedding = _cls_embedding(loaded, device, recorded.precision, decoded.rgb)
    return UploadEmbedding(decoded.width, decoded.height, found, embedding)


def _cls_embedding(loaded: LoadedModel, device, precision: str, rgb: Image.Image) -> np.ndarray:
    """The CLS token of one picture, float32, computed as the indexer's embed_files computes it for a batch."""
    from indexer.model import forward_features

    tokens = forward_features(loaded.model, loaded.transform(rgb).unsqueeze(0), device, precision)
    return tokens[0, 0].float().cpu().numpy()
