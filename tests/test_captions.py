"""Issue 18: the caption grammar (pure, truthful, every clause order), the frozen held-out phrasings it never
produces, the held-out eval set and its position counting, and a fine-tune from a checkpoint on grammar
captions."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from latentstudio.cli import app
from latentstudio.models.loader import load_checkpoint
from latentstudio.train import captions, eval_shapes, shapes
from latentstudio.train.config import ModelConfig, VaeConfig
from latentstudio.train.heldout_phrasings import HELDOUT_TEMPLATES, ISSUE_PHRASINGS
from latentstudio.train.loop import train
from latentstudio.train.phrasing import PhrasingTask, caption_pair
from latentstudio.train.recipe import builtin_model_path, phrasing_recipe
from latentstudio.train.tasks import ModelTask, VaeTask, model_data
from tests.test_train import TINY_MODEL, TINY_VAE

# The test's own reading of a caption (independent of the grammar's tables).
SIZE_OF = {"small": "small", "tiny": "small", "medium-sized": "medium", "medium": "medium", "large": "large",
           "big": "large"}  # fmt: skip
POSITION_OF = {
    "top left": "top left", "upper left": "top left", "top right": "top right", "upper right": "top right",
    "bottom left": "bottom left", "lower left": "bottom left", "bottom right": "bottom right",
    "lower right": "bottom right", "top": "top", "bottom": "bottom", "left": "left", "right": "right",
    "centered": "center", "center": "center", "middle": "center",
}  # fmt: skip
COLOUR = re.compile(rf"\b({'|'.join(shapes.COLOURS)})\b")
SIZE = re.compile(rf"\b({'|'.join(SIZE_OF)})\b")  # "medium-sized" before "medium"
POSITION = re.compile(rf"\b({'|'.join(sorted(POSITION_OF, key=len, reverse=True))})\b")
SHAPE = re.compile(rf"\b({'|'.join(shapes.SHAPES)})\b")


def _specs(count: int, seed: int) -> list[shapes.ShapeSpec]:
    rng = np.random.default_rng(seed)
    return [shapes.random_spec(rng) for _ in range(count)]


def _read(caption: str) -> dict[str, set[str]]:
    """The attributes a caption names: a colour right before "background", or after "on " or
    "background: ", is the background; any other colour the foreground."""
    named: dict[str, set[str]] = {"fg": set(), "bg": set()}
    for match in COLOUR.finditer(caption):
        before, after = caption[: match.start()], caption[match.end() :]
        is_bg = after.startswith(" background") or before.endswith(("on ", "background: "))
        named["bg" if is_bg else "fg"].add(match.group(1))
    named["shape"] = set(SHAPE.findall(caption))
    named["size"] = {SIZE_OF[w] for w in SIZE.findall(caption)}
    named["position"] = {POSITION_OF[w] for w in POSITION.findall(caption.replace("background", ""))}
    return named


def test_the_grammar_is_a_pure_function_of_spec_and_generator() -> None:
    spec = shapes.ShapeSpec("star", "red", "blue", "large", "top left")
    drawn = [captions.grammar_caption(spec, np.random.default_rng(i)) for i in range(200)]
    assert drawn == [captions.grammar_caption(spec, np.random.default_rng(i)) for i in range(200)]
    assert len(set(drawn)) > 100
    rng = np.random.default_rng(7)
    form = captions.grammar_form(spec, rng)
    assert captions.fill_form(form, spec, rng) == captions.grammar_caption(spec, np.random.default_rng(7))
    assert spec.caption(2) in drawn  # the templates stay possible outputs, filled as before


def test_grammar_captions_name_only_the_specs_attributes() -> None:
    specs, rng = _specs(5000, 1), np.random.default_rng(2)
    with_fg = with_bg = 0
    for spec in specs:
        caption = captions.grammar_caption(spec, rng)
        named = _read(caption)
        assert named["shape"] == {spec.shape}, caption
        assert named["fg"] <= {spec.fg}, caption
        assert named["bg"] <= {spec.bg}, caption
        assert named["size"] <= {spec.size}, caption
        assert named["position"] <= {spec.position}, caption
        with_fg += bool(named["fg"])
        with_bg += bool(named["bg"])
    assert with_fg / len(specs) >= 0.85
    assert with_bg / len(specs) >= 0.8


def _order(form: str) -> tuple[str, ...]:
    """The clauses of a form in the order they appear."""
    marks = {"size": "{size}", "fg": "{fg}", "shape": "{shape}", "bg": "{bg}"}
    where = {name: form.find(mark) for name, mark in marks.items()}
    where["pos"] = max(form.find("{pos}"), form.find("centered"))
    return tuple(sorted((name for name, at in where.items() if at >= 0), key=lambda n: where[n]))


def test_the_grammar_covers_every_clause_order_subset_and_family() -> None:
    forms = captions.grammar_forms()
    assert all("{shape}" in form for form in forms)
    orders = {_order(form) for form in forms}
    clauses = ("size", "fg", "shape", "pos", "bg")
    assert set(itertools.permutations(clauses)) <= orders  # every order of all five (comma lists)
    for r in range(5):  # every subset of the optional clauses
        for subset in itertools.combinations(("size", "fg", "pos", "bg"), r):
            assert any(set(order) == {*subset, "shape"} for order in orders), subset
    assert set(shapes.TEMPLATES) <= forms
    for start in ("a picture of a", "an image of a", "a photo of a", "a drawing of a", "there is a",
                  "on a {bg} background, ", "against a {bg} background, ", "{bg} background, a",
                  "background: {bg}, ", "a {bg} background with a"):  # fmt: skip
        assert any(form.startswith(start) for form in forms), start
    assert "{fg}, {shape}, {size}, {bg} background" in forms  # "red, star, small, blue background"
    assert "a {fg} {shape} with a {bg} background" in forms
    assert "a {fg} {shape} centered on a {bg} background" in captions.grammar_forms("center")
    assert "a {fg} {shape} in the {pos} corner" in captions.grammar_forms("corner")
    assert not any("corner" in form or "centered" in form for form in captions.grammar_forms("edge"))
    rng = np.random.default_rng(4)
    for spec in _specs(2000, 3):  # what is sampled is what is enumerated
        kind = captions.position_kind(spec.position)
        assert captions.grammar_form(spec, rng) in captions.grammar_forms(kind)
    words = " ".join(captions.grammar_caption(s, rng) for s in _specs(3000, 5))
    for word in ("big", "tiny", "medium-sized", "upper left", "lower right", "middle", "centered", "corner"):
        assert word in words, word


def test_heldout_phrasings_are_never_grammar_forms_nor_captions() -> None:
    forms = captions.grammar_forms()
    assert len(HELDOUT_TEMPLATES) == 24
    assert len(set(HELDOUT_TEMPLATES)) == 24
    assert not set(HELDOUT_TEMPLATES) & forms
    assert not set(HELDOUT_TEMPLATES) & set(shapes.TEMPLATES)
    assert set(ISSUE_PHRASINGS) == captions.EXCLUDED_FORMS
    # the exclusion is narrow: the issue's phrasings' neighbours stay in the grammar
    for neighbour in ("an image of a {fg} {shape} on a {bg} background",
                      "against a {bg} background, a {fg} {shape}",
                      "a {size} {fg} {shape} in the {pos} on a {bg} background"):  # fmt: skip
        assert neighbour in forms
    # the held-out set speaks the grammar's words, plus at most these two
    vocabulary = {w for form in forms for w in re.findall(r"[a-z-]+", form)}
    new = {w for t in HELDOUT_TEMPLATES for w in re.findall(r"[a-z-]+", t)} - vocabulary
    assert new <= {"and", "over"}, new
    rng = np.random.default_rng(6)
    for spec in _specs(20_000, 6):
        caption = captions.grammar_caption(spec, rng)
        assert caption not in {captions.fill_template(t, spec) for t in HELDOUT_TEMPLATES}, caption


def test_the_heldout_eval_set_is_fixed() -> None:
    first = eval_shapes.heldout_specs(8)
    assert first == eval_shapes.heldout_specs(8)
    assert eval_shapes.heldout_specs(60)[:8] == first
    assert first[0][1] == "on a blue background, a white star"  # the issue's first phrasing, spec 0
    assert [s for s, _ in eval_shapes.heldout_specs(30)] == [s for s, _ in eval_shapes.eval_specs(30)]
    for i, (spec, caption) in enumerate(eval_shapes.heldout_specs(48)):
        assert caption == captions.fill_template(HELDOUT_TEMPLATES[i % 24], spec)
        for word in (spec.fg, spec.shape, spec.bg):
            assert word in caption
    prompts = eval_shapes.prompt_set(48, "heldout")
    assert sum(named for _, _, named in prompts) == 24  # 12 of the 24 templates name the position
    assert all(named for _, _, named in eval_shapes.prompt_set(8, "templates"))
    with pytest.raises(ValueError, match="phrasing"):
        eval_shapes.prompt_set(2, "other")  # type: ignore[arg-type]


def test_accuracy_counts_position_only_where_a_prompt_names_it() -> None:
    specs = [shapes.ShapeSpec("star", "red", "blue", "large", "top left")] * 4
    readings = [
        eval_shapes.Reading("red", "blue", "star", p) for p in ("top left", "center", "left", "top left")
    ]
    accuracy = eval_shapes.score(readings, specs, [True, False, False, True])
    assert (accuracy.count, accuracy.position_count, accuracy.position) == (4, 2, 1.0)
    assert (accuracy.fg, accuracy.bg, accuracy.shape) == (1.0, 1.0, 1.0)
    assert eval_shapes.score(readings, specs).position == 0.5
    assert eval_shapes.score(readings, specs).position_count == 4
    assert eval_shapes.score(readings, specs, [False] * 4).position == 0.0
    assert set(accuracy.as_dict()) == {"count", "fg", "bg", "shape", "position"}


def test_samples_with_grammar_captions_draw_the_same_pictures() -> None:
    for i in range(20):
        a, b = shapes.sample(5, i), shapes.sample(5, i, captions="grammar")
        assert a.spec == b.spec
        assert np.array_equal(a.image, b.image)
        assert b.caption == shapes.sample(5, i, captions="grammar").caption
    _, texts, _ = shapes.batch(5, 0, 20, captions="grammar")
    assert texts == [shapes.sample(5, i, captions="grammar").caption for i in range(20)]
    assert texts != shapes.batch(5, 0, 20)[1]
    with pytest.raises(ValueError, match="captions"):
        shapes.sample(5, 0, captions="free")


def test_phrasing_recipe_teaches_the_shipped_models_text_encoder() -> None:
    config = phrasing_recipe(Path("runs/p"))
    assert (config.init, config.data_seed) == (str(builtin_model_path()), 1)
    assert (config.steps, config.batch_size, config.lr, config.warmup) == (500, 128, 3e-4, 50)
    task = PhrasingTask(config)
    builtin = load_checkpoint(builtin_model_path(), device=torch.device("cpu"), dtype=torch.float32)
    assert list(task.modules) == ["text_encoder"]  # the UNet and VAE stay frozen
    student = task.modules["text_encoder"].state_dict()
    assert all(
        torch.equal(student[k], v) for k, v in builtin.text_encoders["text_encoder"].state_dict().items()
    )


def test_phrasing_pairs_a_grammar_caption_with_a_template_anchor_of_the_same_picture() -> None:
    pairs = [caption_pair(1, index, 0.1) for index in range(400)]
    assert pairs == [caption_pair(1, index, 0.1) for index in range(400)]
    for spec, caption, anchor in pairs:
        assert anchor == "" or anchor in {spec.caption(k) for k in range(len(captions.TEMPLATES))}
        assert caption == "" or spec.shape in caption
    empty = sum(caption == "" for _, caption, _ in pairs) / len(pairs)
    assert 0.05 < empty < 0.15  # caption dropout 0.1
    assert len({anchor for _, _, anchor in pairs}) > 300


def _tiny_checkpoint(tmp_path: Path) -> Path:
    """A randomly initialised tiny model exported as ``train model`` exports it (with a tiny VAE)."""
    vae_task = VaeTask(VaeConfig(output_dir=str(tmp_path / "vae"), **TINY_VAE))  # type: ignore[arg-type]
    vae_task.export(vae_task.modules, tmp_path / "vae")
    base = ModelTask(ModelConfig(vae=str(tmp_path / "vae"), **TINY_MODEL))  # type: ignore[arg-type]
    base.export(base.modules, tmp_path / "init")
    return tmp_path / "init" / "model.safetensors"


def test_phrasing_trains_only_the_text_encoder(tmp_path: Path) -> None:
    init = _tiny_checkpoint(tmp_path)
    config = ModelConfig(output_dir=str(tmp_path / "run"), init=str(init), steps=3, lr=1e-2,
                         **{**TINY_MODEL, "ema_decay": 0.0})  # type: ignore[arg-type]  # fmt: skip
    train(PhrasingTask(config), config)
    with (
        safe_open(str(init), "pt") as a,
        safe_open(str(tmp_path / "run" / "final" / "model.safetensors"), "pt") as b,
    ):
        assert set(a.keys()) == set(b.keys())
        changed = {k.split(".")[0] for k in a.keys() if not torch.equal(a.get_tensor(k), b.get_tensor(k))}  # noqa: SIM118
    assert changed == {"cond_stage_model"}  # the UNet and VAE bit for bit; the text encoder learnt
    with pytest.raises(ValueError, match="init"):
        PhrasingTask(ModelConfig(**TINY_MODEL))  # type: ignore[arg-type]


def test_a_fine_tune_from_a_checkpoint_on_grammar_captions_runs(tmp_path: Path) -> None:
    init = _tiny_checkpoint(tmp_path)
    config = ModelConfig(output_dir=str(tmp_path / "run"), init=str(init), captions="grammar", steps=3,
                         ema_decay=0.9, **TINY_MODEL)  # type: ignore[arg-type]  # fmt: skip
    task = ModelTask(config)
    loaded = load_checkpoint(init, device=torch.device("cpu"), dtype=torch.float32)
    for name, module in (("unet", loaded.unet), ("text_encoder", loaded.text_encoders["text_encoder"])):
        state = task.modules[name].state_dict()
        assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    assert task.data is not None
    assert torch.equal(task.data(0, 4)[1], model_data(0, 32, 0, 4, captions="grammar")[1])
    train(task, config)
    assert ModelConfig.load(tmp_path / "run" / "config.json") == config
    tuned = load_checkpoint(tmp_path / "run" / "final" / "model.safetensors", device=torch.device("cpu"),
                            dtype=torch.float32)  # fmt: skip
    assert tuned.info.native_size == 32
    with pytest.raises(ValueError, match=r"init: .*model\.safetensors: its architecture differs"):
        ModelTask(ModelConfig(init=str(init), **{**TINY_MODEL, "unet_channels": (16, 16)}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vae: required without init"):
        ModelTask(ModelConfig(**TINY_MODEL))  # type: ignore[arg-type]


def test_eval_shapes_cli_checks_the_set_before_loading(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "shapes", "--set", "nope", "--model", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "--set: 'nope' is not one of templates, heldout, both" in result.stderr
