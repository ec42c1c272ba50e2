"""The built-in model's recipe (``latentstudio train shapes``) and where the shipped file lives."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from latentstudio.models.builtin import builtin_checkpoint as builtin_model_path
from latentstudio.train.config import ModelConfig, VaeConfig

__all__ = ["ShapesRecipe", "builtin_model_path", "run_recipe", "shapes_recipe"]


@dataclass(frozen=True)
class ShapesRecipe:
    """Both stages of the built-in model, in ``output_dir/vae`` and ``output_dir/model``."""

    vae: VaeConfig
    model: ModelConfig

    @property
    def checkpoint(self) -> Path:
        """Where the model stage writes the single-file checkpoint."""
        return Path(self.model.output_dir) / "final" / "model.safetensors"


def shapes_recipe(output_dir: Path, *, threads: int = 1, scale: float = 1.0) -> ShapesRecipe:
    """The exact configs of the shipped model; ``scale`` < 1 shortens both stages (smoke runs)."""
    vae = VaeConfig(
        output_dir=str(output_dir / "vae"), steps=1300, batch_size=8, warmup=20, lr=1e-3,
        lr_steps=((1000, 3e-4),), norm_groups=1, threads=threads,
        checkpoint_every=50, sample_every=150, log_every=10,
    )  # fmt: skip
    model = ModelConfig(
        output_dir=str(output_dir / "model"), vae=str(output_dir / "vae" / "final"),
        steps=1200, batch_size=32, warmup=50, lr=5e-4, lr_steps=((900, 2e-4),), threads=threads,
        ema_decay=0.995, checkpoint_every=100, sample_every=300, log_every=10,
    )  # fmt: skip
    if scale != 1.0:
        vae = dataclasses.replace(vae, steps=max(2, round(vae.steps * scale)))
        model = dataclasses.replace(model, steps=max(2, round(model.steps * scale)))
    return ShapesRecipe(vae, model)


def run_recipe(recipe: ShapesRecipe, destination: Path | None = None) -> Path:
    """Train (or resume) both stages; copy the checkpoint to ``destination`` if given. Returns its path."""
    from latentstudio.train.loop import train
    from latentstudio.train.tasks import ModelTask, VaeTask

    if not (Path(recipe.vae.output_dir) / "final" / "vae.safetensors").is_file():
        train(VaeTask(recipe.vae), recipe.vae)
    if not recipe.checkpoint.is_file():
        train(ModelTask(recipe.model), recipe.model)
    if destination is None:
        return recipe.checkpoint
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe.checkpoint, destination)
    return destination
