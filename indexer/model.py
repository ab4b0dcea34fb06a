"""The DINOv2 model: where its weights come from, which device and precision run it, and the exact preprocessing.

Weights come from one of three places, and the dataset records which (its weights identity):
- the Hugging Face hub through timm (read from the local cache when it is there; downloaded otherwise),
- a local file (`--weights`: timm safetensors or Meta's original .pth; timm converts Meta's keys),
- a seeded random initialisation (`--random-weights`), for tests and demos on machines without a network.
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.data import create_transform

from db.errors import DinoscopeError

DEFAULT_MODEL = "vit_base_patch14_reg4_dinov2.lvd142m"
DEFAULT_IMAGE_SIZE = 224
RANDOM_SEED = 0


class ModelError(DinoscopeError):
    """The model cannot be built as asked; the message says what to change."""


class WeightsUnavailable(ModelError):
    pass


@dataclass(frozen=True)
class WeightsChoice:
    kind: str  # "hub", "file" or "random"
    file: Path | None = None
    revision: str | None = None  # hub only: exactly this snapshot from the local cache, never a download


@dataclass(frozen=True)
class Weights:
    kind: str
    identity: str  # what makes two runs' weights the same: a hub revision, a file hash, or the random seed
    source: str | None  # where they were read from: a file path, a hub repository, or nothing


@dataclass
class LoadedModel:
    model: torch.nn.Module
    name: str
    weights: Weights
    image_size: int
    patch_size: int
    embed_dim: int
    num_prefix_tokens: int  # CLS + registers, ahead of the patch tokens in forward_features
    transform: object
    preprocessing: dict
    quantized: bool = False  # its linear layers replaced by int8 ones (by inference_model, once)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.image_size // self.patch_size, self.image_size // self.patch_size


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but torch sees no CUDA device here (use --device cpu)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("--device mps was asked for, but this torch has no MPS device (use --device cpu)")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "int8" and device.type != "cpu":
        raise ModelError(f"--precision int8 (the linear layers quantised to int8) runs on the CPU only, not on "
                         f"{device.type}: use --device cpu with it, or --precision bf16 or fp16 on {device.type}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """fp16 runs under autocast; fp32 and bf16 (a model cast by `inference_model`) run as they are."""
    if precision != "fp16":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


def inference_model(loaded: LoadedModel, device: torch.device, precision: str) -> torch.nn.Module:
    """The model on `device`, ready for `forward_features`, moved (and for bf16 cast, for int8 quantised) in place.

    bf16 casts the whole model: bf16 has float32's range, so nothing overflows, and running every layer in bf16
    is about a third faster on CPUs with native bf16 than autocast, which converts activations around each
    LayerNorm and residual addition. fp16 keeps autocast (LayerNorm and softmax in float32), as its range is narrow.
    int8 (CPU only) quantises the linear layers, see `_quantize_linear_layers`.
    A LoadedModel serves one device and precision: the float32 weights are not kept after a bf16 cast or int8.
    """
    model = loaded.model.to(device)
    if precision == "int8" and not loaded.quantized:
        _quantize_linear_layers(model)
        loaded.quantized = True
    return model.to(torch.bfloat16) if precision == "bf16" else model


# Torch (2.14 still) warns, at each quantisation, that its eager quantisation is deprecated for the torchao package
# (a dependency of its own, not taken here), and that quantised tensors are. Both work as documented; the warnings
# would repeat with every model built and say nothing to the user. Should a later torch drop them, int8 says so.
_QUANTIZATION_DEPRECATIONS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation"),
)


def _quantize_linear_layers(model: torch.nn.Module) -> None:
    """Replaces every nn.Linear (attention and MLP: nearly all of a ViT's compute) in place by torch's dynamically
    quantised one: int8 weights (one scale per layer), activations quantised per batch as they come, int32
    accumulation, float32 out. LayerNorm, softmax, the patch embedding and the residual stream stay float32."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as error:
        raise ModelError(f"--precision int8 needs torch.ao.quantization, which torch {torch.__version__} does not "
                         "have: use --precision fp32 (or bf16 on a CPU with native bf16)") from error
    with warnings.catch_warnings():
        for category, message in _QUANTIZATION_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=category)
        quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def forward_features(model: torch.nn.Module, pixels: torch.Tensor, device: torch.device,
                     precision: str) -> torch.Tensor:
    """All output tokens (B, prefix + patches, D) of a batch of model inputs, for a model from `inference_model`."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    pixels = pixels.to(device, non_blocking=True).to(dtype)  # pinned on CUDA: the copy overlaps the host's work
    with torch.inference_mode(), _autocast(device, precision):
        return model.forward_features(pixels)


def load_model(name: str, weights: WeightsChoice, image_size: int) -> LoadedModel:
    """Build the model at `image_size` (position embeddings resampled once if the weights were made for another)."""
    if not timm.is_model(name):
        raise ModelError(f"timm has no model named {name!r} (for example: {DEFAULT_MODEL})")
    if weights.kind == "random":
        torch.manual_seed(RANDOM_SEED)
        model = _create(name, image_size, pretrained=False)
        source = Weights("random", f"random-init (seed {RANDOM_SEED}, timm {timm.__version__})", None)
    elif weights.kind == "file":
        model = _create_from_file(name, image_size, weights.file)
        source = Weights("file", f"sha256:{_file_sha256(weights.file)}", str(weights.file.resolve()))
    else:
        file, repo, revision = _hub_weights_file(name, weights.revision)
        model = _create_from_file(name, image_size, file)
        source = Weights("hub", f"hf-hub:{repo}@{revision}", repo)
    model.eval()
    patch_size = model.patch_embed.patch_size[0]
    if image_size % patch_size:
        raise ModelError(f"image size {image_size} is not a multiple of the patch size {patch_size}"
                         f" (try {image_size // patch_size * patch_size or patch_size})")
    config = model.pretrained_cfg
    transform = create_transform(
        input_size=(3, image_size, image_size), interpolation=config.get("interpolation", "bicubic"),
        mean=config["mean"], std=config["std"], crop_pct=1.0, crop_mode="squash",
    )
    preprocessing = {
        "resize": f"whole image squashed to {image_size}x{image_size} (no crop; aspect ratio not kept)",
        "interpolation": config.get("interpolation", "bicubic"),
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        "exif_orientation": "applied",
        "transparency": "composited on white",
        "timm_transform": repr(transform),
    }
    return LoadedModel(model, name, source, image_size, patch_size, model.num_features, model.num_prefix_tokens,
                       transform, preprocessing)


def _create(name: str, image_size: int, **kwargs) -> torch.nn.Module:
    model = timm.create_model(name, img_size=image_size, num_classes=0, **kwargs)
    if not hasattr(model, "patch_embed") or not hasattr(model, "num_prefix_tokens"):
        raise ModelError(f"{name} is not a vision transformer with patch tokens; use a DINOv2 model such as "
                         f"{DEFAULT_MODEL}")
    return model


def _create_from_file(name: str, image_size: int, file: Path) -> torch.nn.Module:
    if not file.is_file():
        raise ModelError(f"weights file {file} does not exist")
    try:
        return _create(name, image_size, pretrained=True, pretrained_cfg_overlay={"file": str(file)})
    except ModelError:
        raise
    except Exception as error:  # safetensors, pickle and state-dict errors all mean: not weights for this model
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ModelError(f"weights file {file} cannot be loaded into {name}: {detail}") from error


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _hub_weights_file(name: str, revision: str | None = None) -> tuple[Path, str, str]:
    """The cached weights file of a pretrained timm model, downloading it first if the hub can be reached
    (a given `revision` only from the cache)."""
    import huggingface_hub

    config = timm.models.get_pretrained_cfg(name)
    repo = getattr(config, "hf_hub_id", None)
    if not repo:
        raise ModelError(f"timm has no pretrained weights on the hub for {name}: use --weights FILE or "
                         "--random-weights")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision)
        if isinstance(cached, str):
            return Path(cached), repo, Path(cached).parent.name
    if revision is not None:
        raise WeightsUnavailable(
            f"the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) holds no snapshot {revision} of "
            f"{repo}: copy it there from a machine with a network (`hf download {repo} --revision {revision}`)"
        )
    if huggingface_hub.constants.HF_HUB_OFFLINE or not _hub_reachable():
        raise WeightsUnavailable(
            f"no pretrained weights for {name}: the model hub cannot be reached and the Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}) does not hold {repo}. Either fill the cache on a machine "
            f"with a network (`hf download {repo}`) and copy it here, pass --weights FILE, or pass "
            "--random-weights for a demo"
        )
    cached = huggingface_hub.hf_hub_download(repo, "model.safetensors")
    return Path(cached), repo, Path(cached).parent.name


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers on TCP; behind a proxy, assume yes and let the download decide."""
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import huggingface_hub

    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def recorded_weights(kind: str, identity: str, source: str | None) -> WeightsChoice:
    """The weights a dataset records (kind, identity, source), as a choice that loads exactly those or fails:
    the same file path, the same hub snapshot (from the cache only), or the same seed."""
    if kind == "file":
        return WeightsChoice("file", Path(source))
    if kind == "hub":
        return WeightsChoice("hub", revision=identity.rpartition("@")[2])
    return WeightsChoice("random")
