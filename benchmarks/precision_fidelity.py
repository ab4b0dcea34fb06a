"""How far the embeddings of another precision (int8 by default) are from fp32's, on the sample photographs.

    python benchmarks/precision_fidelity.py                                      # ViT-B/14 at 224, random weights
    python benchmarks/precision_fidelity.py --precision int8 --precision bf16    # bf16 too
    python benchmarks/precision_fidelity.py --weights dinov2_vitb14_reg4.safetensors   # trained weights

The 44 sample photographs (`dinoscope samples`) are embedded as the indexer embeds them (`embed_files`, the CLS
embedding in float32 and the patch grid in float16, as stored) in fp32 and in each --precision, from the same
weights. Per precision the table gives:

- CLS cosine: between each image's fp32 and other-precision CLS embedding, mean and minimum over the images;
- grid cosine: the same for every patch token of every image's grid;
- top-10 overlap: each image in turn is the reference, its 10 nearest images by CLS cosine (itself left out) are
  found among the fp32 embeddings and among the other precision's, and the share of the fp32 list that the other
  list holds too is averaged over the references (minimum beside it).

Without --weights the weights are random (seeded), and each figure is given twice: for timm's initialisation, whose
layer scales of 1e-5 leave the patch tokens nearly as the patch embedding made them (so its grid cosines say
little), and for the same weights with the layer scales at 1, so that every block changes the tokens as trained
blocks do. Neither is a trained network: measure with --weights FILE for the real figures.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch

from dashboard.analysis.comparison import overlap_at_k, top_k_rows
from indexer.embed import embed_files
from indexer.model import DEFAULT_MODEL, LoadedModel, WeightsChoice, cpu_has_native_bf16, load_model
from indexer.samples import sample_sources

PRECISIONS = ("bf16", "fp16", "int8")  # compared with fp32 on the CPU


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model(args: argparse.Namespace, weights: WeightsChoice, unit_layer_scales: bool) -> LoadedModel:
    """The same weights each time (a LoadedModel serves one precision), with the layer scales at 1 if asked."""
    loaded = load_model(args.model, weights, args.image_size)
    for module in loaded.model.modules():
        if unit_layer_scales and hasattr(module, "gamma"):
            module.gamma.data.fill_(1.0)
    return loaded


def embeddings(paths: list[Path], loaded: LoadedModel, precision: str,
               batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """CLS embeddings (N, D) float32 and patch grids (N, gh, gw, D) float16 of the files, as the indexer stores them."""
    results = [result for batch in embed_files(paths, loaded, torch.device("cpu"), precision, batch_size, workers=0)
               for result in batch]
    failed = [path.name for path, result in zip(paths, results) if result.content is None]
    if failed:
        raise SystemExit(f"could not embed {', '.join(failed)}")
    return (np.stack([result.content.embedding for result in results]),
            np.stack([result.content.patch_grid for result in results]))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def top_k_overlaps(first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """Per reference (every row), the overlap of its top-k lists among `first` and among `second`."""
    references = np.arange(len(first))
    a = top_k_rows(first, first, k, exclude=references)
    b = top_k_rows(second, second, k, exclude=references)
    return np.array([overlap_at_k(x, y) for x, y in zip(a, b)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--weights", type=Path, help="a weights file (default: seeded random weights)")
    parser.add_argument("--precision", action="append", choices=PRECISIONS,
                        help="compared with fp32; repeat for more (default: int8)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    precisions = list(dict.fromkeys(args.precision or ["int8"]))
    weights = WeightsChoice("file", args.weights) if args.weights else WeightsChoice("random")
    variants = {"trained weights" if args.weights else "random weights, timm's init (layer scales 1e-5)": False}
    if not args.weights:
        variants["random weights, layer scales at 1 (blocks change the tokens)"] = True

    paths = [path for files in sample_sources().values() for path in files]
    print(f"{args.model} at {args.image_size} px on the CPU ({cpu_name()}, {torch.get_num_threads()} threads, "
          f"{'native' if cpu_has_native_bf16() else 'no native'} bf16), {len(paths)} sample photographs, "
          f"batch {args.batch_size}, torch {torch.__version__}")
    if not args.weights:
        print("RANDOM WEIGHTS (seeded): not a trained network; measure with --weights FILE for the real figures")
    print()
    print(f"| weights | precision | CLS cosine mean / min | grid cosine mean / min | top-{args.k} overlap mean / min |")
    print("| --- | --- | --- | --- | --- |")
    for variant, unit_scales in variants.items():
        cls32, grids32 = embeddings(paths, model(args, weights, unit_scales), "fp32", args.batch_size)
        for precision in precisions:
            cls, grids = embeddings(paths, model(args, weights, unit_scales), precision, args.batch_size)
            by_cls, by_patch = cosines(cls32, cls), cosines(grids32, grids)
            overlaps = top_k_overlaps(cls32, cls, args.k)
            print(f"| {variant} | {precision} | {by_cls.mean():.5f} / {by_cls.min():.5f} | "
                  f"{by_patch.mean():.5f} / {by_patch.min():.5f} | {overlaps.mean():.3f} / {overlaps.min():.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
