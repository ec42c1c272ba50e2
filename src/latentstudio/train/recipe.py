"""The built-in model's recipe (``latentstudio train shapes``) and where the shipped file lives."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from latentstudio.models.builtin import builtin_checkpoint as builtin_model_path
from latentstudio.train.config import ModelConfig, VaeConfig

__all__ = [
    "ShapesRecipe",
    "builtin_model_path",
    "loss_curve",
    "model_card",
    "phrasing_card",
    "phrasing_recipe",
    "run_recipe",
    "shapes_recipe",
    "training_seconds",
]
CARD_NAME = "MODEL_CARD.md"


@dataclass(frozen=True)
class ShapesRecipe:
    """Both stages of the built-in model, in ``output_dir/vae`` and ``output_dir/model``."""

    vae: VaeConfig
    model: ModelConfig

    @property
    def checkpoint(self) -> Path:
        """Where the model stage writes the single-file checkpoint."""
        return Path(self.model.output_dir) / "final" / "model.safetensors"


def shapes_recipe(
    output_dir: Path,
    *,
    threads: int = 1,
    data_workers: int = 0,
    scale: float = 1.0,
    captions: Literal["templates", "grammar"] = "templates",
) -> ShapesRecipe:
    """The exact configs of the shipped model; ``scale`` < 1 shortens both stages (smoke runs);
    ``captions="grammar"``: the model stage on the caption grammar's phrasings (issue 18), else the same.

    ``threads`` and ``data_workers`` (processes rendering the next batches, for a GPU) change speed and
    float rounding only. The model stage's batch of 512 is sized for a GPU (it took 5.6 min on an H200);
    on a 2-core CPU it is hours (see the model card).
    """
    vae = VaeConfig(
        output_dir=str(output_dir / "vae"), steps=6500, batch_size=8, warmup=20, lr=5e-4,
        lr_steps=((5500, 1.5e-4),), norm_groups=1, threads=threads, data_workers=data_workers,
        checkpoint_every=250, sample_every=0, log_every=50,
    )  # fmt: skip
    model = ModelConfig(
        output_dir=str(output_dir / "model"), vae=str(output_dir / "vae" / "final"),
        steps=2800, batch_size=512, warmup=100, lr=1e-3, lr_steps=((1680, 3e-4), (2380, 1e-4)),
        threads=threads, data_workers=data_workers, ema_decay=0.999, checkpoint_every=250,
        sample_every=0, log_every=50, captions=captions,
    )  # fmt: skip
    if scale != 1.0:  # shorter stages, their learning-rate steps at the same fractions

        def shorten(steps: int) -> int:
            return max(2, round(steps * scale))

        vae = dataclasses.replace(vae, steps=shorten(vae.steps),
                                  lr_steps=tuple((shorten(s), lr) for s, lr in vae.lr_steps))  # fmt: skip
        model = dataclasses.replace(model, steps=shorten(model.steps),
                                    lr_steps=tuple((shorten(s), lr) for s, lr in model.lr_steps))  # fmt: skip
    return ShapesRecipe(vae, model)


def phrasing_recipe(
    output_dir: Path,
    *,
    init: Path | None = None,
    threads: int = 1,
    data_workers: int = 0,
    steps: int = 500,
    batch_size: int = 128,
    lr: float = 3e-4,
) -> ModelConfig:
    """The text encoder of ``init`` (default: the shipped built-in model) taught the caption grammar by
    distillation (:class:`latentstudio.train.phrasing.PhrasingTask`; issue 18: ordinary phrasings). The
    shipped architecture, data seed 1 (pictures the original run did not draw); warm-up 50, EMA 0.999,
    min-SNR 5."""
    base = shapes_recipe(output_dir).model
    return dataclasses.replace(
        base, output_dir=str(output_dir), vae="", init=str(init or builtin_model_path()), captions="grammar",
        steps=steps, batch_size=batch_size, lr=lr, warmup=50, lr_steps=(), ema_decay=0.999,
        min_snr_gamma=5.0, caption_dropout=0.1, data_seed=1, threads=threads, data_workers=data_workers,
        checkpoint_every=100, sample_every=0, log_every=10,
    )  # fmt: skip


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


def training_seconds(run_dir: Path) -> float:
    """Wall time of a run from its ``log.jsonl``: each call of the loop logs the seconds since it began
    (``elapsed_s``), so the calls of a resumed run are summed (a call ends where ``elapsed_s`` falls);
    records from before that field existed count as one call from step 0 at their last rate."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]  # fmt: skip
    old = [r for r in records if "elapsed_s" not in r]
    new = [r for r in records if "elapsed_s" in r]
    seconds = old[-1]["step"] / old[-1]["it_s"] if old else 0.0
    ends = [a["elapsed_s"] for a, b in itertools.pairwise(new) if b["elapsed_s"] < a["elapsed_s"]]
    return float(seconds + sum(ends) + (new[-1]["elapsed_s"] if new else 0.0))


def loss_curve(run_dir: Path, every: int = 500) -> list[tuple[int, float]]:
    """``(step, mean loss of the last logged window)`` from a run's ``log.jsonl`` at every ``every`` steps
    and the last step (a resumed run's repeated steps: the newest record wins)."""
    records: dict[int, float] = {}
    for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[int(record["step"])] = float(record["loss"])
    if not records:
        return []
    last = max(records)
    return [(step, records[step]) for step in sorted(records) if step % every == 0 or step == last]


def model_card(
    recipe: ShapesRecipe,
    checkpoint: Path,
    accuracy: dict[str, float],
    *,
    heldout: dict[str, float] | None = None,
    steps: int = 20,
    sampler: str = "DPM++ 2M",
    cfg_scale: float = 7.0,
    notes: str = "",
) -> str:
    """The built-in model's card (Markdown): architecture, file, the exact configs, loss curves and the
    ``eval shapes`` accuracy ``accuracy`` (:meth:`Accuracy.as_dict`) on the template set and, if given,
    ``heldout`` on the held-out phrasings (sampling settings below)."""
    return (
        _CARD_INTRO
        + _file_section(checkpoint)
        + _training_section(recipe, notes)
        + _evaluation_section(accuracy, heldout, steps=steps, sampler=sampler, cfg_scale=cfg_scale)
        + _CARD_LIMITS
    )


def phrasing_card(
    card: str, config: ModelConfig, accuracy: dict[str, float], heldout: dict[str, float], notes: str = ""
) -> str:
    """``card`` (the shipped model's) after a :func:`phrasing_recipe` fine-tune: a fine-tune section (its
    config and loss curve) and the evaluation on both prompt sets in place of the old evaluation."""
    head = card.split("## Phrasing fine-tune", maxsplit=1)[0].split("## Evaluation", maxsplit=1)[0]
    config_json = json.dumps(dataclasses.asdict(config), indent=2)
    section = f"""## Phrasing fine-tune (`latentstudio train shapes-phrasing`)

Issue 18: the model above misread ordinary phrasings ("on a purple background, a black square": colours
right about half the time, positions ignored). Its text encoder was then taught the caption grammar of
`latentstudio.train.captions` (any order and subset of the clauses, synonyms, fillers, comma lists, "with"
clauses; the five templates in 20 % of the captions), the UNet and VAE frozen (bit for bit the weights
above), with the ordinary ε loss plus an anchor holding its hidden states for the template captions (and
the empty prompt) to the original's (`latentstudio.train.phrasing`). Model data seed {config.data_seed}.
Tried first: a fine-tune of the UNet and text encoder on grammar captions (batch 128, 600 steps, lr 2e-4)
learnt the phrasings (held-out fg 49 % → 93 %) but lost the positions (templates 95.8 % → 46.9 % on 96
prompts; they emerged only at batch 512 in the original run); distilling the frozen UNet's prediction for
the matching template caption lost colours and positions on the templates within 300 steps.
{notes}
```json
{config_json}
```

| step | loss (min-SNR-weighted ε MSE + anchor) |
|---|---|
{_curve_rows(config.output_dir, every=100)}

"""
    return (
        head
        + section
        + _evaluation_section(accuracy, heldout, steps=20, sampler="DPM++ 2M", cfg_scale=7.0)
        + _CARD_LIMITS
    )


_CARD_INTRO = """# latentstudio-shapes — the built-in model

A tiny text-to-image latent diffusion model of flat shapes, trained from scratch on the procedural
shapes set (`latentstudio.train.shapes`: circle, square, triangle, star; 8 colours; 3 sizes; 9 positions;
a background of another colour). It ships so that `latentstudio serve` and `latentstudio generate` make real
pictures on a fresh install with no download. It is the default only when the models folder has no
checkpoint (`Settings.builtin_model`, on by default).

"""

_CARD_LIMITS = """## Limits

It draws one flat shape on a flat background at 64 × 64 and knows only the words of its captions; anything
else gives a plausible-looking shape picture. Not a general model; meant for trying the product, for tests
and as a training example.
"""


def _parameter_counts(checkpoint: Path) -> tuple[int, int, int, int]:
    """``(tensor count, UNet, VAE, text encoder parameters)`` of a single-file checkpoint, from its header."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), "pt") as f:
        keys = list(f.keys())
        counts = {"model.diffusion_model.": 0, "first_stage_model.": 0, "cond_stage_model.": 0}
        for key in keys:
            for prefix in counts:
                if key.startswith(prefix):
                    counts[prefix] += _numel(f.get_slice(key).get_shape())
    unet, vae, text = counts.values()
    return len(keys), unet, vae, text


def _file_section(checkpoint: Path) -> str:
    """The card's ``## File`` section: size, layout and parameter counts of ``checkpoint``."""
    tensors, unet, vae, text = _parameter_counts(checkpoint)
    size_mb = checkpoint.stat().st_size / 1e6
    return f"""## File

- `{checkpoint.name}`: {size_mb:.2f} MB, fp16, SD1 single-file (LDM) layout, {tensors} tensors; the
  architecture (diffusers / transformers configs, JSON only) in the safetensors metadata
  `latentstudio.architecture`, so the ordinary checkpoint loader builds it from the file alone.
- UNet {unet / 1e6:.2f} M parameters (cross-attention, SD1 blocks), VAE {vae / 1e6:.2f} M (AutoencoderKL,
  8× downscale, 4 latent channels), CLIP text encoder {text / 1e6:.2f} M (real CLIP vocabulary and
  tokenizer, 49 408 × 64 token embeddings — most of it).
- Native size 64 × 64 (8 × 8 latents); ε-prediction on SD's scaled-linear schedule (1000 steps).

"""


def _curve_rows(run_dir: str, every: int = 500) -> str:
    """A run's :func:`loss_curve` as Markdown table rows ``| step | loss |``."""
    return "\n".join(f"| {step} | {loss:.4f} |" for step, loss in loss_curve(Path(run_dir), every))


def _training_section(recipe: ShapesRecipe, notes: str) -> str:
    """The card's ``## How it was trained`` section: both stages' configs (JSON) and loss curves."""
    vae_cfg = json.dumps(dataclasses.asdict(recipe.vae), indent=2)
    model_cfg = json.dumps(dataclasses.asdict(recipe.model), indent=2)
    return f"""## How it was trained

`latentstudio train shapes --output-dir runs/shapes --ship` runs the two stages below (each resumable) and
copies the checkpoint here. Data: pure functions of (seed, index), nothing downloaded; VAE data seed
{recipe.vae.seed}, model data seed {recipe.model.data_seed}.
{notes}
### Stage 1: VAE (`train vae`)

```json
{vae_cfg}
```

| step | loss (L1 + L2 + KL) |
|---|---|
{_curve_rows(recipe.vae.output_dir)}

### Stage 2: UNet + text encoder (`train model`)

```json
{model_cfg}
```

| step | loss (min-SNR-weighted ε MSE) |
|---|---|
{_curve_rows(recipe.model.output_dir)}

"""


def _evaluation_section(
    accuracy: dict[str, float],
    heldout: dict[str, float] | None,
    *,
    steps: int,
    sampler: str,
    cfg_scale: float,
) -> str:
    """The card's ``## Evaluation`` section: the ``eval shapes`` accuracy on the template set (and the
    held-out phrasings if given) and the sampling settings."""
    n = int(accuracy["count"])

    def row(name: str, acc: dict[str, float]) -> str:
        return f"| {name} | {acc['fg']:.1%} | {acc['bg']:.1%} | {acc['shape']:.1%} | {acc['position']:.1%} |"

    rows = row("templates", accuracy)
    heldout_text = ""
    if heldout is not None:
        rows += "\n" + row("held-out phrasings", heldout)
        heldout_text = f""" The held-out set
(`--set heldout`, {int(heldout["count"])} prompts) writes the same specs with 24 phrasings that no training
caption uses (`latentstudio.train.heldout_phrasings`); its position column counts only the prompts that
name a position."""
    return f"""## Evaluation (`latentstudio eval shapes --subset {n}`)

{n} fixed prompts naming every attribute (training templates 1 and 2; prompt *i* uses seed *i*), {steps}
steps {sampler}, CFG {cfg_scale}, read by the deterministic pixel classifier of
`latentstudio.train.eval_shapes` (exact on the generator's own renders).{heldout_text}

| prompt set | foreground colour | background colour | shape | position |
|---|---|---|---|---|
{rows}

Goal (issue 8): foreground ≥ 95 %, background ≥ 95 %, shape ≥ 85 %. CI checks a smaller subset
(tests/test_builtin_model.py).

"""


def _numel(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total
