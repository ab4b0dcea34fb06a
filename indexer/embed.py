"""Batched embedding: DataLoader workers read and decode files while the model runs on the previous batch.

Every item keeps the index of its file from start to end, and a file that cannot be decoded comes back as a
failure at its own index; nothing is ever substituted, so a row can never receive another file's embedding.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice, pairwise
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from db.records import ImageContent, JpegImage
from indexer.decode import UnreadableImage, decode_image, thumbnails
from indexer.model import LoadedModel, forward_features, inference_model
from indexer.processes import end_with


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
    """Runs in the decode worker: one tensor per chunk crosses to the main process, not one per file."""
    tensors = [item.tensor for item in items if item.failure is None]
    return DecodedBatch([replace(item, tensor=None) for item in items], torch.stack(tensors) if tensors else None)


def _joined(chunks: list[DecodedBatch]) -> DecodedBatch:
    """One batch of consecutive chunks; pinned chunks give a pinned batch."""
    if len(chunks) == 1:
        return chunks[0]
    tensors = [chunk.pixels for chunk in chunks if chunk.pixels is not None]
    pixels = None
    if tensors:
        pixels = torch.empty((sum(len(t) for t in tensors), *tensors[0].shape[1:]), dtype=tensors[0].dtype,
                             pin_memory=tensors[0].is_pinned())
        torch.cat(tensors, out=pixels)
    return DecodedBatch([item for chunk in chunks for item in chunk.files], pixels)


def _start_decode_worker(indexer_pid: int, _worker_id: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one file at a time; more threads would only contend
    end_with(indexer_pid)
    # SIGTERM sent to the whole process group (by a service manager, say) ends a worker quietly, as Ctrl-C does,
    # and leaves the indexer to stop the run.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def batch_chunks(count: int, batch_size: int, workers: int) -> list[list[range]]:
    """The file indices of each batch, in one chunk per decode worker: all the workers decode the batch the model
    needs next, so the first one is ready sooner and none waits on a single worker."""
    batches = []
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        parts = min(max(1, workers), size)
        bounds = [start + size * part // parts for part in range(parts + 1)]
        batches.append([range(low, high) for low, high in pairwise(bounds)])
    return batches


def decoded_batches(paths: Sequence[Path], loaded: LoadedModel, device: torch.device, batch_size: int,
                    workers: int) -> Iterator[DecodedBatch]:
    """Batches of decoded files, in order, read and decoded by `workers` processes (0: in this one) ahead of the
    model. The workers start when this is called, and end with this process however it ends."""
    batches = batch_chunks(len(paths), batch_size, workers)
    chunks = iter(DataLoader(
        ImageFiles(paths, loaded.transform, loaded.image_size),
        batch_sampler=[chunk for batch in batches for chunk in batch],
        num_workers=workers,
        collate_fn=_stacked,
        pin_memory=device.type == "cuda",
        worker_init_fn=partial(_start_decode_worker, os.getpid()) if workers else None,
        prefetch_factor=2 if workers else None,  # two chunks per worker: the next two batches
        persistent_workers=False,
    ))
    return (_joined(list(islice(chunks, len(batch)))) for batch in batches)


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
    batches = decoded_batches(paths, loaded, device, batch_size, workers)  # the workers decode while the model
    model = inference_model(loaded, device, precision)  # is moved and cast
    for batch in batches:
        results = {item.index: EmbeddedFile(item.index, None, item.failure) for item in batch.files if item.failure}
        if batch.pixels is not None:
            decoded = [item for item in batch.files if item.failure is None]
            cls, grids = embed_pixels(model, batch.pixels, loaded, device, precision)
            for row, item in enumerate(decoded):
                content = ImageContent(item.width, item.height, cls[row], grids[row], item.thumbnails)
                results[item.index] = EmbeddedFile(item.index, content)
        yield [results[item.index] for item in batch.files]
