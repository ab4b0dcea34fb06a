"""Batched embedding: DataLoader workers read and decode files while the model runs on the previous batch.

Every item keeps the index of its file from start to end, and a file that cannot be decoded comes back as a
failure at its own index; nothing is ever substituted, so a row can never receive another file's embedding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from db.mutations import ImageContent, JpegImage
from indexer.decode import UnreadableImage, decode_image, thumbnails
from indexer.model import LoadedModel, forward_features, inference_model


@dataclass
class DecodedFile:
    index: int
    tensor: torch.Tensor | None
    thumbnails: dict[str, JpegImage] | None
    width: int = 0
    height: int = 0
    failure: str | None = None


@dataclass(frozen=True)
class EmbeddedFile:
    index: int
    content: ImageContent | None
    failure: str | None = None


class ImageFiles(Dataset):
    """Files by position; each item is decoded, preprocessed and thumbnailed, or carries why it could not be."""

    def __init__(self, paths: Sequence[Path], transform, image_size: int) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedFile:
        try:
            data = self.paths[index].read_bytes()
        except OSError as error:
            return DecodedFile(index, None, None, failure=f"cannot read file: {error.strerror or error}")
        try:
            decoded = decode_image(data, self.image_size)
        except UnreadableImage as error:
            return DecodedFile(index, None, None, failure=str(error))
        size = (decoded.width, decoded.height)
        return DecodedFile(index, self.transform(decoded.rgb), thumbnails(decoded.rgb, size), *size)


@dataclass(frozen=True)
class DecodedBatch:
    files: list[DecodedFile]  # in order, their tensors moved into `pixels`
    pixels: torch.Tensor | None  # the model inputs of the files that decoded, stacked in their order

    def pin_memory(self) -> DecodedBatch:
        """Called by the DataLoader on CUDA: page-locked inputs copy to the device while the host goes on."""
        return DecodedBatch(self.files, None if self.pixels is None else self.pixels.pin_memory())


def _stacked(items: list[DecodedFile]) -> DecodedBatch:
    """Runs in the decode worker: one tensor per batch crosses to the main process, not one per file."""
    tensors = [item.tensor for item in items if item.failure is None]
    return DecodedBatch([replace(item, tensor=None) for item in items], torch.stack(tensors) if tensors else None)


def _single_threaded_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decode workers must not compete with the model for cores


def decoded_batches(paths: Sequence[Path], loaded: LoadedModel, device: torch.device, batch_size: int,
                    workers: int) -> DataLoader:
    """Batches of decoded files, read and decoded by `workers` processes (0: in this one) ahead of the model."""
    return DataLoader(
        ImageFiles(paths, loaded.transform, loaded.image_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_stacked,
        pin_memory=device.type == "cuda",
        worker_init_fn=_single_threaded_worker if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


def embed_pixels(model: torch.nn.Module, pixels: torch.Tensor, loaded: LoadedModel, device: torch.device,
                 precision: str) -> tuple[np.ndarray, np.ndarray]:
    """CLS embeddings (float32, B x D) and patch grids (float16, B x grid height x grid width x D) of a batch of
    model inputs, for a model from `inference_model`."""
    tokens = forward_features(model, pixels, device, precision)
    cls = tokens[:, 0].float().cpu().numpy()
    patches = tokens[:, loaded.num_prefix_tokens:].to(torch.float16).cpu().numpy()
    return cls, patches.reshape(len(pixels), *loaded.grid_size, loaded.embed_dim)


def embed_files(
    paths: Sequence[Path],
    loaded: LoadedModel,
    device: torch.device,
    precision: str,
    batch_size: int,
    workers: int,
) -> Iterator[list[EmbeddedFile]]:
    """Embed files in order, one list per batch, failures included at their own index."""
    batches = iter(decoded_batches(paths, loaded, device, batch_size, workers))  # workers start decoding now,
    model = inference_model(loaded, device, precision)  # while the model is moved and cast
    for batch in batches:
        results = {item.index: EmbeddedFile(item.index, None, item.failure) for item in batch.files if item.failure}
        if batch.pixels is not None:
            decoded = [item for item in batch.files if item.failure is None]
            cls, grids = embed_pixels(model, batch.pixels, loaded, device, precision)
            for row, item in enumerate(decoded):
                content = ImageContent(item.width, item.height, cls[row], grids[row], item.thumbnails)
                results[item.index] = EmbeddedFile(item.index, content)
        yield [results[item.index] for item in batch.files]
