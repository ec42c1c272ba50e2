"""The procedural shapes set and the eval classifier (exact on the generator's own pictures)."""

from __future__ import annotations

import numpy as np

from latentstudio.train import eval_shapes, shapes


def test_samples_are_a_pure_function_of_seed_and_index() -> None:
    a, b = shapes.sample(3, 17), shapes.sample(3, 17)
    assert np.array_equal(a.image, b.image)
    assert a.caption == b.caption
    assert a.image.shape == (64, 64, 3)
    assert a.image.dtype == np.uint8
    assert not np.array_equal(shapes.sample(3, 18).image, a.image)
    images, captions, specs = shapes.batch(3, 16, 4)
    assert images.shape == (4, 3, 64, 64)
    assert float(images.min()) >= -1.0
    assert float(images.max()) <= 1.0
    assert captions[1] == a.caption
    assert specs[1] == a.spec


def test_captions_name_the_attributes() -> None:
    spec = shapes.ShapeSpec("triangle", "yellow", "black", "small", "top right")
    assert spec.caption(0) == "a yellow triangle on a black background"
    assert spec.caption(1) == "small yellow triangle, top right, black background"
    seen = {shapes.sample(0, i).spec for i in range(300)}
    assert {s.shape for s in seen} == set(shapes.SHAPES)
    assert {s.fg for s in seen} == set(shapes.COLOURS)
    assert {s.position for s in seen} == set(shapes.POSITIONS)
    assert all(s.fg != s.bg for s in seen)


def test_classifier_is_exact_on_ground_truth_renders() -> None:
    samples = [shapes.sample(11, i) for i in range(400)]
    readings = [eval_shapes.classify(s.image) for s in samples]
    accuracy = eval_shapes.score(readings, [s.spec for s in samples])
    assert accuracy.as_dict() == {"count": 400, "fg": 1.0, "bg": 1.0, "shape": 1.0, "position": 1.0}


def test_classifier_sees_no_foreground_on_a_flat_picture() -> None:
    flat = np.full((64, 64, 3), 30, dtype=np.uint8)
    assert eval_shapes.classify(flat) == eval_shapes.Reading("none", "black", "none", "none")


def test_the_eval_set_is_fixed_and_names_every_attribute() -> None:
    first = eval_shapes.eval_specs(8)
    assert first == eval_shapes.eval_specs(8)
    assert eval_shapes.eval_specs(16)[:8] == first
    for spec, caption in first:
        for word in (spec.fg, spec.shape, spec.bg, spec.position, spec.size):
            assert word in caption
