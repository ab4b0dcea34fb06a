"""Batched embedding: DataLoader workers read and decode files while the model runs on the previous batch.

Every item keeps the index of its file from start to end, and a file that cannot be decoded comes back as a
failure at its own index; nothing is ever substituted, so a row can never receive another file's embedding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from db.mutations import ImageContent, JpegImage
from indexer.decode import UnreadableImage, decode_image, thumbnails
from indexer.model import LoadedModel, autocast


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
        return DecodedFile(index, self.transform(decoded.rgb), thumbnails(decoded.rgb), decoded.width, decoded.height)


def _single_threaded_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decode workers must not compete with the model for cores


def embed_files(
    paths: Sequence[Path],
    loaded: LoadedModel,
    device: torch.device,
    precision: str,
    batch_size: int,
    workers: int,
) -> Iterator[list[EmbeddedFile]]:
    """Embed files in order, one list per batch, failures included at their own index."""
    loader = DataLoader(
        ImageFiles(paths, loaded.transform, loaded.image_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        pin_memory=device.type == "cuda",
        worker_init_fn=_single_threaded_worker if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    model = loaded.model.to(device)
    grid_height, grid_width = loaded.grid_size
    for batch in loader:
        decoded = [item for item in batch if item.failure is None]
        results = {item.index: EmbeddedFile(item.index, None, item.failure) for item in batch if item.failure}
        if decoded:
            pixels = torch.stack([item.tensor for item in decoded]).to(device, non_blocking=True)
            with torch.inference_mode(), autocast(device, precision):
                tokens = model.forward_features(pixels)
            cls = tokens[:, 0].float().cpu().numpy()
            patches = tokens[:, loaded.num_prefix_tokens:].to(torch.float16).cpu().numpy()
            patches = patches.reshape(len(decoded), grid_height, grid_width, loaded.embed_dim)
            for row, item in enumerate(decoded):
                content = ImageContent(item.width, item.height, cls[row], patches[row], item.thumbnails)
                results[item.index] = EmbeddedFile(item.index, content)
        yield [results[item.index] for item in batch]
