"""LoRA files of every supported format for tiny models, with the weight change each must make.

:class:`LoraBuilder` writes the tensors a trainer would (kohya, LyCORIS, diffusers/PEFT layouts) for
chosen modules and records the expected ``ΔW`` at strength 1, computed here with plain loops and matmuls —
independently of ``latentstudio.models.lora.deltas`` — so a test checks ``W' = W + m·ΔW`` for every module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from latentstudio.models.loader import Components

Delta = dict[tuple[str, str, str], torch.Tensor]  # (component, module path, "weight"/"bias") -> ΔW


class LoraBuilder:
    """Random LoRA tensors for modules of ``components`` (seeded), and their expected weight changes."""

    def __init__(self, components: Components, seed: int = 0) -> None:
        self.components = components
        self.generator = torch.Generator().manual_seed(seed)
        self.state: dict[str, torch.Tensor] = {}
        self.deltas: Delta = {}

    def module(self, component: str, path: str) -> torch.nn.Module:
        root = self.components.unet if component == "unet" else self.components.text_encoders[component]
        modules = dict(root.named_modules())
        return modules[path] if path in modules else modules[path.removeprefix("text_model.")]

    def param(self, component: str, path: str, attr: str = "weight") -> torch.Tensor:
        """The module's current parameter (as the model uses it now)."""
        tensor: torch.Tensor = getattr(self.module(component, path), attr)
        return tensor.detach()

    def weight(self, component: str, path: str) -> torch.Tensor:
        return self.module(component, path).weight.detach().float()

    def rand(self, *shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator) * scale

    def _record(self, component: str, path: str, delta: torch.Tensor, attr: str = "weight") -> None:
        key = (component, path, attr)
        self.deltas[key] = self.deltas.get(key, 0) + delta

    def lora(
        self, key: str, component: str, path: str, *, rank: int = 4, alpha: float | None = 2.0,
        style: str = "kohya", dora: str | None = None, mid: bool = False,
    ) -> None:  # fmt: skip
        """kohya ``lora_up/lora_down`` (LoCon for convs, ``mid``: Tucker core), PEFT ``lora_A/lora_B``
        (``style="peft"``), old diffusers ``lora.up/lora.down`` (``"diffusers"``) or attention processors
        ``….processor.to_q_lora.up.weight`` (``"processor"``); ``dora``:
        ``"in"`` (kohya ``dora_scale [1, in]``) or ``"out"`` (PEFT ``lora_magnitude_vector [out]``)."""
        w = self.weight(component, path)
        out, inner = w.shape[0], w[0].numel()
        kernel = tuple(w.shape[2:])
        if mid:
            down = self.rand(rank, w.shape[1], 1, 1)
            core = self.rand(rank, rank, *kernel)
            up = self.rand(out, rank, 1, 1)
            delta = torch.zeros_like(w)
            for k in range(kernel[0]):
                for j in range(kernel[1]):
                    delta[:, :, k, j] = up[:, :, 0, 0] @ core[:, :, k, j] @ down[:, :, 0, 0]
            self.state[f"{key}.lora_mid.weight"] = core
        else:
            down = self.rand(rank, *w.shape[1:])
            up = self.rand(out, rank, *([1, 1] if kernel else []))
            delta = (up.reshape(out, rank) @ down.reshape(rank, inner)).reshape(w.shape)
        names = {
            "kohya": (".lora_up.weight", ".lora_down.weight"),
            "peft": (".lora_B.weight", ".lora_A.weight"),
            "diffusers": (".lora.up.weight", ".lora.down.weight"),
            "processor": ("_lora.up.weight", "_lora.down.weight"),
        }[style]
        self.state[key + names[0]], self.state[key + names[1]] = up, down
        if alpha is not None:
            self.state[f"{key}.alpha"] = torch.tensor(alpha)
            delta = delta * (alpha / rank)
        if dora is not None:
            delta = self._dora(key, w, delta, dora)
        self._record(component, path, delta)

    def _dora(self, key: str, w: torch.Tensor, delta: torch.Tensor, axis: str) -> torch.Tensor:
        merged = w + delta
        if axis == "in":  # one magnitude per input column
            magnitude = merged.norm(dim=0, keepdim=True) * (1 + self.rand(1, w.shape[1]))
            self.state[f"{key}.dora_scale"] = magnitude
            return merged / merged.norm(dim=0, keepdim=True) * magnitude - w
        magnitude = merged.norm(dim=1) * (1 + self.rand(w.shape[0]))
        self.state[f"{key}.lora_magnitude_vector"] = magnitude
        return merged / merged.norm(dim=1, keepdim=True) * magnitude[:, None] - w

    def loha(
        self, key: str, component: str, path: str, *, rank: int = 3, alpha: float = 1.5, tucker: bool = False
    ) -> None:
        """LyCORIS LoHa: ``(w1a @ w1b) ⊙ (w2a @ w2b)``; ``tucker``: with ``hada_t1``/``hada_t2`` (convs)."""
        w = self.weight(component, path)
        out = w.shape[0]
        factors = []
        for n in (1, 2):
            if tucker:
                core, wa, wb = (
                    self.rand(rank, rank, *w.shape[2:]),
                    self.rand(rank, out),
                    self.rand(rank, w.shape[1]),
                )
                full = torch.zeros_like(w)
                for k in range(w.shape[2]):
                    for j in range(w.shape[3]):
                        full[:, :, k, j] = wa.t() @ core[:, :, k, j] @ wb
                self.state[f"{key}.hada_t{n}"] = core
            else:
                wa, wb = self.rand(out, rank), self.rand(rank, w[0].numel())
                full = (wa @ wb).reshape(w.shape)
            self.state[f"{key}.hada_w{n}_a"], self.state[f"{key}.hada_w{n}_b"] = wa, wb
            factors.append(full)
        self.state[f"{key}.alpha"] = torch.tensor(alpha)
        self._record(component, path, factors[0] * factors[1] * (alpha / rank))

    def lokr(
        self, key: str, component: str, path: str, *, split: int = 2, rank: int | None = 2, alpha: float = 3.0
    ) -> None:
        """LyCORIS LoKr: ``w1 [split, split] ⊗ w2``; ``w2`` decomposed as ``w2_a @ w2_b`` unless ``rank`` is
        None (then a full ``lokr_w2``, 4-D for convs, and scale 1)."""
        w = self.weight(component, path)
        a, b = split, split
        c, d = w.shape[0] // a, w.shape[1] // b
        w1 = self.rand(a, b, scale=1.0)
        self.state[f"{key}.lokr_w1"] = w1
        if rank is None:
            w2 = self.rand(c, d, *w.shape[2:])
            self.state[f"{key}.lokr_w2"] = w2
            scale = 1.0
        else:
            w2a, w2b = self.rand(c, rank), self.rand(rank, d * w[0, 0].numel())
            self.state[f"{key}.lokr_w2_a"], self.state[f"{key}.lokr_w2_b"] = w2a, w2b
            self.state[f"{key}.alpha"] = torch.tensor(alpha)
            w2, scale = (w2a @ w2b).reshape(c, d, *w.shape[2:]), alpha / rank
        delta = torch.zeros_like(w)
        for i in range(a):
            for j in range(b):
                delta[i * c : (i + 1) * c, j * d : (j + 1) * d] = w1[i, j] * w2
        self._record(component, path, delta * scale)

    def full(self, key: str, component: str, path: str, *, norm: bool = False) -> None:
        """A full difference: ``diff``/``diff_b`` (``norm``: LyCORIS ``w_norm``/``b_norm``)."""
        module = self.module(component, path)
        diff, diff_b = self.rand(*module.weight.shape), self.rand(*module.bias.shape)
        self.state[f"{key}.{'w_norm' if norm else 'diff'}"] = diff
        self.state[f"{key}.{'b_norm' if norm else 'diff_b'}"] = diff_b
        self._record(component, path, diff)
        self._record(component, path, diff_b, "bias")

    def save(self, path: Path, metadata: dict[str, str] | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state.items()}, str(path), metadata=metadata)
        return path


def weights_digest(components: Components) -> str:
    """A sha256 over every UNet and text-encoder tensor's bytes (names, dtypes and shapes included)."""
    import hashlib

    digest = hashlib.sha256()
    modules = {"unet": components.unet, **components.text_encoders}
    for name, module in modules.items():
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
