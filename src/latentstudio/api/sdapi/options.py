"""A1111's settings (``/sdapi/v1/options``): the keys clients read, their defaults, checks and the store.

Each option is one of three kinds:

* ``applied``: it changes the images and jobs honour it (``CLIP_stop_at_last_layers``, ``randn_source``…);
* ``cosmetic``: it changes nothing we produce (file names, UI, previews); stored and returned as given;
* ``fixed``: it would change the images and we do not implement it; only its default is accepted, so a
  client never gets a different picture than it asked for without being told (422 naming the key).

The store is a JSON file in the data dir (``sdapi-options.json``) holding only the values set, written
atomically (temp file, fsync, rename) under an exclusive file lock, so concurrent posts never lose an update
and a crash never leaves half a file. It keeps no state in memory: every read sees the file.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from latentstudio.core import FieldError
from latentstudio.postprocess.tiling import Tiling
from latentstudio.postprocess.upscalers import DEFAULT_TILING, UpscalerRegistry, tiling_from_options
from latentstudio.storage import private_dir, private_file

OPTIONS_FILE = "sdapi-options.json"
Kind = Literal["applied", "cosmetic", "fixed"]
Value = str | int | float | bool | list[str] | None


@dataclass(frozen=True)
class OptionSpec:
    """One option: key, A1111 default, kind, and for numbers the allowed range / for text the choices."""

    key: str
    default: Value
    kind: Kind = "cosmetic"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None

    def check(self, value: object, field: str) -> Value:
        """``value`` converted to this option's type; :class:`FieldError` naming ``field`` otherwise."""
        checked = _typed(self, value, field)
        if self.kind == "fixed" and checked != self.default:
            raise FieldError(field, f"only {self.default!r} is supported (this server does not implement it)")
        return checked


def _typed(spec: OptionSpec, value: object, field: str) -> Value:
    default = spec.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise FieldError(field, f"must be true or false, got {value!r}")
        return value
    if isinstance(default, int | float):
        return _number(spec, value, field)
    if isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 200 for v in value):
            raise FieldError(field, "must be a list of strings")
        return list(value)
    if value is None and default is None:
        return None
    if not isinstance(value, str) or len(value) > 1000:
        raise FieldError(field, f"must be a string (at most 1000 characters), got {type(value).__name__}")
    if spec.choices and value not in spec.choices:
        raise FieldError(field, f"unknown value {value!r}; allowed: {', '.join(spec.choices)}")
    if spec.pattern is not None and re.fullmatch(spec.pattern, value) is None:
        raise FieldError(field, f"{value!r} does not match {spec.pattern}")
    return value


def _number(spec: OptionSpec, value: object, field: str) -> int | float:
    """A finite number in the option's range; integral floats accepted for int options (A1111 serves
    them as floats, so a client posting back what it read sends ``80.0``)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise FieldError(field, f"must be a finite number, got {value!r}")
    number: int | float = value
    if isinstance(spec.default, int):
        if number != int(number):
            raise FieldError(field, f"must be an integer, got {value!r}")
        number = int(number)
    low, high = spec.low, spec.high
    if (low is not None and number < low) or (high is not None and number > high):
        raise FieldError(field, f"must be in [{low}, {high}], got {value!r}")
    return number


_A: Kind = "applied"
_F: Kind = "fixed"
_O = OptionSpec
CATALOG: dict[str, OptionSpec] = {
    spec.key: spec
    for spec in (
        # -- models (checked against the models folder by the router) --
        _O("sd_model_checkpoint", None, _A),
        _O("sd_checkpoint_hash", ""),  # read-only in A1111: set when a model loads
        _O("sd_vae", "Automatic", _A),
        _O("sd_unet", "Automatic", _F, choices=("Automatic",)),
        _O("sd_checkpoints_limit", 1, low=1, high=16),
        _O("sd_checkpoints_keep_in_cpu", True),
        _O("sd_vae_checkpoint_cache", 0, low=0, high=16),
        _O("sd_vae_overrides_per_model_preferences", True),
        _O("disable_weights_auto_swap", True),
        _O("sd_lora", "None"),
        _O("lora_preferred_name", "Alias from file", choices=("Alias from file", "Filename")),
        _O("lora_add_hashes_to_infotext", True),
        # -- sampling: honoured --
        _O("CLIP_stop_at_last_layers", 1, _A, 1, 12),
        _O("eta_noise_seed_delta", 0, _A, 0, 2**32 - 1),
        _O("randn_source", "GPU", _A, choices=("GPU", "CPU", "NV")),
        _O("eta_ancestral", 1.0, _A, 0.0, 10.0),
        _O("eta_ddim", 0.0, _A, 0.0, 10.0),
        _O("s_noise", 1.0, _A, 0.0, 10.0),
        _O("s_churn", 0.0, _A, 0.0, 100.0),
        _O("s_tmin", 0.0, _A, 0.0, 1000.0),
        _O("s_tmax", 0.0, _A, 0.0, 1000.0),  # 0: no upper bound
        _O("s_min_uncond", 0.0, _A, 0.0, 1000.0),
        _O("s_min_uncond_all", False, _A),
        _O("sigma_min", 0.0, _A, 0.0, 1000.0),
        _O("sigma_max", 0.0, _A, 0.0, 1000.0),
        _O("rho", 0.0, _A, 0.0, 100.0),
        _O("sgm_noise_multiplier", False, _A),
        _O("img2img_fix_steps", False, _A),
        _O("initial_noise_multiplier", 1.0, _A, 0.0, 10.0),
        _O("img2img_extra_noise", 0.0, _A, 0.0, 10.0),
        _O("emphasis", "Original", _A, choices=("Original", "No norm", "Ignore", "None")),
        _O("use_old_scheduling", False, _A),
        _O("pad_cond_uncond", False, _A),
        _O("pad_cond_uncond_v0", False, _A),
        _O("img2img_background_color", "#ffffff", _A, pattern="#[0-9a-fA-F]{6}"),
        _O("img2img_color_correction", False, _A),
        _O("tiling", False, _A),
        _O("tiling_axes", "both", _A, choices=("both", "x", "y")),  # ours: the axes tiling wraps
        # -- sampling: not implemented, default only --
        _O("always_discard_next_to_last_sigma", False, _F),
        _O("use_old_karras_scheduler_sigmas", False, _F),
        _O("no_dpmpp_sde_batch_determinism", False, _F),
        _O("skip_early_cond", 0.0, _F),
        _O("beta_dist_alpha", 0.6, _F),
        _O("beta_dist_beta", 0.6, _F),
        _O("uni_pc_variant", "bh1", _F),
        _O("uni_pc_skip_type", "time_uniform", _F),
        _O("uni_pc_order", 3, _F),
        _O("uni_pc_lower_order_final", True, _F),
        _O("upcast_attn", False, _F),
        _O("token_merging_ratio", 0.0, _F),
        _O("token_merging_ratio_img2img", 0.0, _F),
        _O("token_merging_ratio_hr", 0.0, _F),
        _O("sd_vae_encode_method", "Full", _F),
        _O("sd_vae_decode_method", "Full", _F),
        _O("face_restoration", False, _F),
        _O("inpainting_mask_weight", 1.0, _F),
        _O("comma_padding_backtrack", 20, _F),
        _O("use_downcasted_alpha_bar", False, _F),
        # -- output, UI, infotext: no effect on the pixels --
        _O("samples_save", True),
        _O("samples_format", "png", choices=("png",)),
        _O("samples_filename_pattern", ""),
        _O("save_images_add_number", True),
        _O("grid_save", True),
        _O("grid_format", "png", choices=("png",)),
        _O("return_grid", True),
        _O("grid_only_if_multiple", True),
        _O("n_rows", -1, low=-1, high=64),
        _O("enable_pnginfo", True),
        _O("save_txt", False),
        _O("jpeg_quality", 80, low=1, high=100),
        _O("webp_lossless", False),
        _O("outdir_samples", ""),
        _O("outdir_txt2img_samples", "outputs/txt2img-images"),
        _O("outdir_img2img_samples", "outputs/img2img-images"),
        _O("outdir_extras_samples", "outputs/extras-images"),
        _O("outdir_grids", ""),
        _O("save_to_dirs", True),
        _O("send_seed", True),
        _O("send_size", True),
        _O("add_model_hash_to_info", True),
        _O("add_model_name_to_info", True),
        _O("add_version_to_infotext", True),
        _O("infotext_styles", "Apply if any"),
        _O("auto_backcompat", True),
        _O("live_previews_enable", True),
        _O("show_progressbar", True),
        _O("show_progress_every_n_steps", 10, low=-1, high=1000),
        _O("show_progress_type", "Approx cheap"),
        _O("live_preview_content", "Prompt"),
        _O("face_restoration_model", "CodeFormer"),
        _O("code_former_weight", 0.5, low=0.0, high=1.0),
        _O("upscaler_for_img2img", None),
        _O("ESRGAN_tile", 192, low=0, high=4096),  # model upscalers' tiles: read at run time (api.state)
        _O("ESRGAN_tile_overlap", 8, low=0, high=512),
        _O("quicksettings_list", ["sd_model_checkpoint"]),
        _O("hide_samplers", []),
        _O("samplers_in_dropdown", True),
        _O("disable_mmap_load_safetensors", False),
    )
}
"""The options we know, by key, in A1111's order within each group."""


def defaults() -> dict[str, Value]:
    """Every option's A1111 default (lists copied: callers may change them)."""
    return {k: list(s.default) if isinstance(s.default, list) else s.default for k, s in CATALOG.items()}


def check(values: Mapping[str, object], prefix: str = "") -> dict[str, Value]:
    """Validate a ``{key: value}`` set of options (``prefix`` + key names a field in errors).

    Unknown keys, wrong types, out-of-range numbers and non-default values of ``fixed`` options are refused
    with :class:`FieldError`. Model names are checked by the caller (it knows the models folder).
    """
    checked: dict[str, Value] = {}
    for key, value in values.items():
        spec = CATALOG.get(key)
        if spec is None:
            raise FieldError(
                f"{prefix}{key}", "unknown option (see GET /sdapi/v1/options for the known keys)"
            )
        checked[key] = spec.check(value, f"{prefix}{key}")
    return checked


class OptionsStore:
    """The options set through ``POST /sdapi/v1/options``, in ``<data_dir>/sdapi-options.json``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / OPTIONS_FILE

    def load(self) -> dict[str, Value]:
        """Every option: the defaults overlaid with the stored values (unknown or invalid stored keys are
        skipped: a hand-edited file cannot inject anything)."""
        values = defaults()
        for key, value in self._read().items():
            spec = CATALOG.get(key)
            if spec is None:
                continue
            try:
                values[key] = spec.check(value, key)
            except FieldError:
                continue
        return values

    def update(self, changes: Mapping[str, Value]) -> None:
        """Merge already-checked ``changes`` into the file (read-modify-write under the lock)."""
        if not changes:
            return
        private_dir(self.path.parent)
        with self._locked():
            stored = self._read()
            stored.update(changes)
            for key in [k for k, v in stored.items() if k in CATALOG and v == CATALOG[k].default]:
                del stored[key]
            self._write(stored)

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):  # unreadable or corrupt: fall back to the defaults, never crash
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: Mapping[str, object]) -> None:
        text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(prefix=".options-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = private_file(self.path.with_name(self.path.name + ".lock"))
        with lock_path.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def tile_upscalers_by_options(registry: UpscalerRegistry, data_dir: Path) -> None:
    """Model upscalers tile as the stored ``ESRGAN_tile`` / ``ESRGAN_tile_overlap`` say, read at each run
    as A1111 reads its options at upscale time (0: untiled)."""
    store = OptionsStore(data_dir)

    def tiling() -> Tiling | None:
        values = store.load()
        tile, overlap = values["ESRGAN_tile"], values["ESRGAN_tile_overlap"]
        if isinstance(tile, int) and isinstance(overlap, int):
            return tiling_from_options(tile, overlap)
        return DEFAULT_TILING

    registry.tiling_source = tiling
