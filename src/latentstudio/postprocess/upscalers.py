"""Upscalers as A1111 lists and applies them: None, Lanczos, Nearest, and model files loaded with spandrel.

Model files live in A1111's folders under the models root (``models/ESRGAN``, ``models/RealESRGAN``,
``models/SwinIR``, ``models/DAT``, ``models/HAT``, ``models/ScuNET``); each file is one upscaler named by
its file stem. A file is read only through :func:`latentstudio.models.files.read_tensor_file`
(safetensors, or ``torch.load(weights_only=True)``) and the resulting tensors are handed to spandrel,
which detects the architecture from the keys: nothing in a model file ever executes. Inference is tiled
(:mod:`latentstudio.postprocess.tiling`) so memory stays bounded at any image size.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from latentstudio.models.files import ModelFileError, read_tensor_file
from latentstudio.postprocess.tiling import Tiling, run_tiled

BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
# A1111 folder under the models root → how /sdapi/v1/upscalers shows the family in ``model_name``
UPSCALER_FOLDERS: dict[str, str] = {
    "ESRGAN": "ESRGAN",
    "RealESRGAN": "RealESRGAN",
    "SwinIR": "SwinIR",
    "DAT": "DAT",
    "HAT": "HAT",
    "ScuNET": "ScuNET",
}
UPSCALER_SUFFIXES = frozenset({".pt", ".pth", ".safetensors"})
DEFAULT_TILING = Tiling(size=192, overlap=8)  # A1111's ESRGAN_tile / ESRGAN_tile_overlap defaults
# A tile's output side at most (A1111's 192-px tile of a ×2 model): a ×4 model gets 96-px tiles, whose
# full-resolution activations are a quarter of a 192-px tile's (bench/upscale.py: 2048² in ≤ 25% of untiled)
MAX_TILE_OUTPUT = 384
_LANCZOS = Image.Resampling.LANCZOS


class UpscalerNotFoundError(ValueError):
    """An upscaler name that is neither built in nor a discovered model file."""


class UpscalerLoadError(ValueError):
    """A model file that cannot be used as an upscaler (unsafe, corrupt, or an unknown architecture)."""


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of ``/sdapi/v1/upscalers`` (``model_url`` is always None: nothing is downloaded).

    ``scale`` is A1111's nominal scale: 4 unless the name says ``2x``/``x2`` etc., 1 for ScuNET denoisers;
    the real factor comes from the weights when the model is loaded.
    """

    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float


def _nominal_scale(folder: str, name: str) -> float:
    if folder == "ScuNET":
        return 1.0
    match = re.search(r"(\d)[xX]|[xX](\d)", name)
    return float(match.group(1) or match.group(2)) if match else 4.0


def discover_upscalers(models_dir: Path | None) -> list[UpscalerInfo]:
    """The built-ins first, then every model file in the A1111 upscaler folders, sorted by lower-case name.

    Only file names are read (no hashing, no loading). Missing folders (or no models root) are skipped.
    """
    found: list[UpscalerInfo] = []
    for folder, family in UPSCALER_FOLDERS.items():
        if models_dir is None:
            break
        root = models_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in UPSCALER_SUFFIXES:
                found.append(
                    UpscalerInfo(path.stem, family, str(path), None, _nominal_scale(folder, path.stem))
                )
    builtins = [UpscalerInfo(name, None, None, None, 4.0) for name in BUILTIN_UPSCALERS]
    return builtins + sorted(found, key=lambda info: info.name.lower())


def load_spandrel(path: Path, *, device: torch.device, dtype: torch.dtype, registry: Any = None) -> Any:
    """Read ``path`` safely and build the spandrel model its weights describe (eval mode, on ``device``).

    ``registry``: a spandrel ``ArchRegistry`` to detect with (default: spandrel's built-in architectures).

    Returns a spandrel ``ImageModelDescriptor``. Raises :class:`UpscalerLoadError` naming the file for an
    unsafe or corrupt file, or weights of an architecture spandrel does not know.
    """
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        tensors = dict(read_tensor_file(path).tensors)
    except ModelFileError as e:
        raise UpscalerLoadError(str(e)) from e
    try:
        loader = ModelLoader(device=device) if registry is None else ModelLoader(device, registry=registry)
        descriptor = loader.load_from_state_dict(tensors)
    except UnsupportedModelError as e:
        raise UpscalerLoadError(f"{path}: unsupported model architecture (spandrel cannot detect it)") from e
    except (KeyError, RuntimeError, ValueError) as e:
        raise UpscalerLoadError(f"{path}: weights do not fit the detected architecture: {e}") from e
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UpscalerLoadError(f"{path}: a {descriptor.purpose} model, not an image-to-image model")
    if dtype != torch.float32 and not descriptor.supports_half:
        dtype = torch.float32
    return descriptor.to(dtype).eval()


class UpscalerRegistry:
    """The upscalers of one models root: listing, lookup by name and an LRU of loaded models.

    ``cache_size`` models stay loaded (least recently used evicted). ``tiling=None`` runs models on the
    whole image (unbounded memory). ``max_tile_output``: a model's tiles shrink (:func:`tiling_for_scale`)
    so that one tile's output side is at most this many pixels; None: ``tiling.size`` at every scale.
    Thread-safe; build one per process (app lifespan / CLI command).
    """

    def __init__(
        self,
        models_dir: Path | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        tiling: Tiling | None = DEFAULT_TILING,
        cache_size: int = 2,
        max_tile_output: int | None = MAX_TILE_OUTPUT,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        if max_tile_output is not None and max_tile_output < 8:
            raise ValueError(f"max_tile_output must be at least 8 pixels, got {max_tile_output}")
        self.max_tile_output = max_tile_output
        self.models_dir = models_dir
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.tiling = tiling
        # read before each model run when set (A1111 reads opts.ESRGAN_tile / _overlap at upscale time)
        self.tiling_source: Callable[[], Tiling | None] | None = None
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._infos: list[UpscalerInfo] | None = None
        self._loaded: OrderedDict[str, Any] = OrderedDict()

    def refresh(self) -> list[UpscalerInfo]:
        """Rescan the folders (``/sdapi/v1/refresh-…``); loaded models of vanished files are dropped."""
        infos = discover_upscalers(self.models_dir)
        with self._lock:
            self._infos = infos
            paths = {i.model_path for i in infos}
            for key in [k for k in self._loaded if k not in paths]:
                del self._loaded[key]
        return infos

    def list(self) -> list[UpscalerInfo]:
        """Every upscaler, A1111's order (scanned on first use, then cached until :meth:`refresh`)."""
        return self._infos if self._infos is not None else self.refresh()

    def find(self, name: str) -> UpscalerInfo:
        """The upscaler called ``name`` (exact match); raises :class:`UpscalerNotFoundError` listing all."""
        infos = self.list()
        for info in infos:
            if info.name == name:
                return info
        names = ", ".join(i.name for i in infos)
        raise UpscalerNotFoundError(f"could not find upscaler named {name!r}; available: {names}")

    def model(self, name: str) -> Any:
        """The loaded spandrel model of a file upscaler (from the LRU, loading it on a miss)."""
        info = self.find(name)
        if info.model_path is None:
            raise ValueError(f"upscaler {name!r} is built in and has no model")
        with self._lock:
            if info.model_path in self._loaded:
                self._loaded.move_to_end(info.model_path)
                return self._loaded[info.model_path]
            model = load_spandrel(Path(info.model_path), device=self.device, dtype=self.dtype)
            self._loaded[info.model_path] = model
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
            return model

    def resize(self, image: Image.Image, upscaler: str, width: int, height: int) -> Image.Image:
        """``upscale(image, upscaler, size=(width, height))``: the ``(image, name, w, h)`` signature of
        ``pipeline.hires.PixelUpscaler`` (hires fix, img2img resize with an upscaler)."""
        return upscale(image, upscaler, size=(width, height), registry=self)

    def run_model(self, name: str, image: Image.Image) -> Image.Image:
        """One pass of the model upscaler ``name`` over an RGB image (×the model's own scale), tiled."""
        model = self.model(name)
        tiling = self.tiling_source() if self.tiling_source is not None else self.tiling
        if tiling is not None and self.max_tile_output is not None:
            tiling = tiling_for_scale(tiling, int(model.scale), self.max_tile_output)
        return apply_model(model, image, tiling)


def tiling_from_options(tile: int, overlap: int) -> Tiling | None:
    """A1111's ``ESRGAN_tile`` / ``ESRGAN_tile_overlap`` as a :class:`Tiling`: 0 (or less) is no tiling
    (``upscaler_utils.upscale_with_model``); a tile under 8 px becomes 8 and the overlap stays below it."""
    if tile <= 0:
        return None
    size = max(tile, 8)
    return Tiling(size, min(max(overlap, 0), size - 1))


def tiling_for_scale(tiling: Tiling, scale: int, max_output: int) -> Tiling:
    """``tiling`` with its tiles cut to ``max_output // scale`` input pixels (at least 8) when a tile's
    output would be wider than ``max_output``; the overlap is kept (below the new size).

    A model's memory peaks in its full-resolution layers, which grow with the square of the tile's output
    side: a fixed input tile (A1111's 192 px for every model) costs a ×4 model four times a ×2 model.
    """
    if tiling.size * scale <= max_output:
        return tiling
    size = max(max_output // max(scale, 1), 8)
    return Tiling(size, min(tiling.overlap, size - 1))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → ``[1, 3, H, W]`` float32 in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def _to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` in [0, 1] → uint8, rounded to the nearest value; one float temporary (in place)."""
    return tensor.clamp(0, 1).mul_(255.0).round_().to(torch.uint8)


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """``[1, 3, H, W]`` in [0, 1] (or already uint8) → RGB PIL image (rounded to the nearest 8-bit value).

    One float temporary: at 2048² every full-size float copy is 48 MiB.
    """
    pixels = tensor[0] if tensor.dtype == torch.uint8 else _to_uint8(tensor[0].float())
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy(), "RGB")


def apply_model(model: Any, image: Image.Image, tiling: Tiling | None) -> Image.Image:
    """Run a spandrel image model once over ``image`` → ``(W·scale, H·scale)``; tiled when ``tiling``.

    Tiled, finished rows go straight to a uint8 canvas: the only float memory is one tile's activations
    and one band of output rows.
    """
    x = pil_to_tensor(image).to(model.device, model.dtype)
    with torch.inference_mode():
        if tiling is None:
            y = model(x)
        else:
            y = run_tiled(model, x, tiling, scale=model.scale, out_channels=model.output_channels,
                          out_dtype=torch.uint8, finish=_to_uint8)  # fmt: skip
    return tensor_to_pil(y)


def _upscale_by(image: Image.Image, upscaler: str, scale: float, registry: UpscalerRegistry) -> Image.Image:
    """A1111 ``Upscaler.upscale``: up to three ×step passes until ``dest`` is covered, then Lanczos to dest.

    ``dest = (int(w·scale)//8·8, int(h·scale)//8·8)``; Lanczos/Nearest step by ``scale`` each pass, a
    model by its own factor; ``None`` only resizes.
    """
    dest = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
    if min(dest) < 1:
        raise ValueError(f"upscale by {scale} makes a {image.width}x{image.height} image empty")
    for i in range(3):
        if image.width >= dest[0] and image.height >= dest[1] and (i > 0 or scale != 1):
            break
        before = image.size
        if upscaler in ("Lanczos", "Nearest"):
            resample = _LANCZOS if upscaler == "Lanczos" else Image.Resampling.NEAREST
            image = image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        elif upscaler != "None":
            image = registry.run_model(upscaler, image)
        if image.size == before:
            break
    return image if image.size == dest else image.resize(dest, resample=_LANCZOS)


def upscale(
    image: Image.Image,
    upscaler: str,
    *,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    registry: UpscalerRegistry,
) -> Image.Image:
    """Upscale ``image`` with the upscaler named ``upscaler``; exactly one of ``scale`` or ``size``.

    - ``scale``: A1111 ``Upscaler.upscale`` — the result is ``(int(w·scale)//8·8, int(h·scale)//8·8)``.
    - ``size=(width, height)``: A1111 ``images.resize_image`` mode 0 (hires fix, img2img) — ``None``
      resizes with Lanczos; otherwise the upscaler runs at ``max(width/w, height/h)`` when that is > 1,
      then Lanczos gives exactly ``width × height`` (stretching if the aspect ratio differs).

    Raises :class:`UpscalerNotFoundError` for an unknown name, :class:`UpscalerLoadError` for a bad file.
    """
    if (scale is None) == (size is None):
        raise ValueError("upscale needs exactly one of scale= or size=")
    registry.find(upscaler)  # fail on an unknown name before any work
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        return _upscale_by(image.convert("RGB"), upscaler, scale, registry)
    assert size is not None
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height), got {size}")
    factor = max(width / image.width, height / image.height)
    if upscaler != "None" and image.mode != "L" and factor > 1.0:  # A1111 resizes masks (L) plainly
        image = _upscale_by(image.convert("RGB"), upscaler, factor, registry)
    return image if image.size == (width, height) else image.resize((width, height), resample=_LANCZOS)
