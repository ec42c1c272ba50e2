"""The OpenPose preprocessors (openpose, openpose_hand, openpose_face, openpose_faceonly, openpose_full) from
the three files the user placed: the networks against an independent forward written here from the
extension's layer lists, the post-processing on hand-made heatmaps and fields whose skeleton is known, the
hand and face boxes, the drawing and the JSON, the files each module needs, and a wrong file refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import annotators, openpose, openpose_draw, preprocessors
from latentstudio.control.openpose_draw import COLOURS, Person
from latentstudio.control.weights import load_network
from latentstudio.core import FieldError

VGG = ["conv1_1", "conv1_2", "P", "conv2_1", "conv2_2", "P", "conv3_1", "conv3_2", "conv3_3", "conv3_4", "P",
       "conv4_1", "conv4_2"]  # fmt: skip
BODY_TRUNK = [*VGG, "conv4_3_CPM", "conv4_4_CPM"]
POOL = 1_000_003  # random values drawn per state
SINGLE_TRUNK = [*VGG, "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3_CPM"]


def _stage(suffix: str) -> list[str]:
    return [f"Mconv{i}_{suffix}" for i in range(1, 8)]


def _shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """The released files' tensor shapes (``conv1_1.weight`` …), from the extension's layer tables."""
    shapes: dict[str, tuple[int, ...]] = {}
    chans = {"conv1_1": (3, 64), "conv1_2": (64, 64), "conv2_1": (64, 128), "conv2_2": (128, 128),
             "conv3_1": (128, 256), "conv4_1": (256, 512), "conv4_2": (512, 512)}  # fmt: skip
    chans.update({f"conv3_{i}": (256, 256) for i in (2, 3, 4)})
    if kind == "body":
        chans.update({"conv4_3_CPM": (512, 256), "conv4_4_CPM": (256, 128)})
        for b, parts in ((1, 38), (2, 19)):
            chans.update({f"conv5_{i}_CPM_L{b}": (128, 128) for i in (1, 2, 3)})
            chans.update({f"conv5_4_CPM_L{b}": (128, 512, 1), f"conv5_5_CPM_L{b}": (512, parts, 1)})
            for s in range(2, 7):
                chans.update(_stage_chans(f"stage{s}_L{b}", 185, parts))
    else:
        parts = 22 if kind == "hand" else 71
        chans.update({n: (512, 512) for n in ("conv4_3", "conv4_4", "conv5_1", "conv5_2")})
        chans.update(
            {"conv5_3_CPM": (512, 128), "conv6_1_CPM": (128, 512, 1), "conv6_2_CPM": (512, parts, 1)}
        )
        for s in range(2, 7):
            chans.update(_stage_chans(f"stage{s}", 128 + parts, parts))
    for name, (cin, cout, *k) in chans.items():
        kernel = k[0] if k else 3
        shapes[f"{name}.weight"] = (cout, cin, kernel, kernel)
        shapes[f"{name}.bias"] = (cout,)
    return shapes


def _stage_chans(suffix: str, cin: int, parts: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {f"Mconv1_{suffix}": (cin, 128, 7)}
    out.update({f"Mconv{i}_{suffix}": (128, 128, 7) for i in (2, 3, 4, 5)})
    return {**out, f"Mconv6_{suffix}": (128, 128, 1), f"Mconv7_{suffix}": (128, parts, 1)}


def random_state(kind: str, seed: int) -> dict[str, torch.Tensor]:
    """A random state in the released layout, He-scaled so that the maps are neither 0 nor huge. The
    weights are windows at random offsets into one pool of normal noise (drawing all 127 M values would
    take seconds)."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(POOL, generator=g).repeat(2)
    state = {}
    for name, shape in _shapes(kind).items():
        count = int(np.prod(shape))
        start = int(torch.randint(0, POOL, (1,), generator=g))
        window = pool[start : start + POOL]
        values = (window[:count] if count <= POOL else window.repeat(count // POOL + 1)[:count]).reshape(
            shape
        )
        scale = (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5 if len(shape) == 4 else 0.05
        state[name] = values * scale
    return state


def _convs(
    state: dict[str, torch.Tensor], names: list[str], x: torch.Tensor, linear: set[str]
) -> torch.Tensor:
    for name in names:
        if name == "P":
            x = F.max_pool2d(x, kernel_size=2, stride=2)
            continue
        w = state[f"{name}.weight"]
        x = F.conv2d(x, w, state[f"{name}.bias"], padding=w.shape[-1] // 2)
        x = x if name in linear else F.relu(x)
    return x


def reference_body(state: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bodypose_model written out; its last heatmap layer keeps its ReLU (the extension's layer list)."""
    linear = {
        "conv5_5_CPM_L1",
        "conv5_5_CPM_L2",
        *(f"Mconv7_stage{s}_L{b}" for s in range(2, 6) for b in (1, 2)),
    }
    linear.add("Mconv7_stage6_L1")
    features = _convs(state, BODY_TRUNK, x, set())
    first = [f"conv5_{i}_CPM_L" for i in range(1, 6)]
    pafs = _convs(state, [n + "1" for n in first], features, linear)
    heat = _convs(state, [n + "2" for n in first], features, linear)
    for s in range(2, 7):
        h = torch.cat([pafs, heat, features], 1)
        pafs, heat = (
            _convs(state, _stage(f"stage{s}_L1"), h, linear),
            _convs(state, _stage(f"stage{s}_L2"), h, linear),
        )
    return pafs, heat


def reference_single(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """handpose_model / FaceNet's last stage written out."""
    linear = {"conv6_2_CPM", *(f"Mconv7_stage{s}" for s in range(2, 7))}
    features = _convs(state, SINGLE_TRUNK, x, set())
    h = _convs(state, ["conv6_1_CPM", "conv6_2_CPM"], features, linear)
    for s in range(2, 7):
        h = _convs(state, _stage(f"stage{s}"), torch.cat([h, features], 1), linear)
    return h


@pytest.fixture(scope="module")
def states() -> dict[str, dict[str, torch.Tensor]]:
    return {"body": random_state("body", 1), "hand": random_state("hand", 2), "face": random_state("face", 3)}


FILES = {"body": openpose.BODY, "hand": openpose.HAND, "face": openpose.FACE}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, states: dict[str, dict[str, torch.Tensor]]) -> Path:
    """A models folder with the three files in our folder."""
    root = tmp_path_factory.mktemp("op") / "models"
    (root / annotators.OWN_FOLDER / "openpose").mkdir(parents=True)
    for kind, state in states.items():
        torch.save(state, root / annotators.OWN_FOLDER / FILES[kind])
    return root


def _picture(seed: int = 0, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.full((*size, 3), 60, np.uint8)
    pixels[20:70, 15:55] = rng.integers(100, 255, 3)
    pixels[40:60, 30:75] = rng.integers(0, 100, 3)
    return pixels


def test_the_networks_equal_an_independent_forward(
    models: Path, states: dict[str, dict[str, torch.Tensor]]
) -> None:
    folder = models / annotators.OWN_FOLDER
    x = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0)) - 0.5
    with torch.no_grad():
        body = load_network(folder / openpose.BODY, openpose.BodyNetwork, "body")
        for ours, theirs in zip(body(x), reference_body(states["body"], x), strict=True):
            assert ours.shape == theirs.shape
            assert theirs.abs().max() > 0.05
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        for kind, build, parts in (("hand", openpose.HandNetwork, 22), ("face", openpose.FaceNetwork, 71)):
            ours = load_network(folder / FILES[kind], build, kind)(x)
            theirs = reference_single(states[kind], x)
            assert ours.shape == (1, parts, 6, 5)
            assert theirs.abs().max() > 0.05
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


# a skeleton with its joints at least 12 px apart, on a 200 × 160 (H × W) canvas
SKELETON = np.array([(80, 30), (80, 55), (60, 55), (45, 80), (40, 105), (100, 55), (115, 80), (120, 105),
                     (68, 110), (66, 140), (64, 170), (92, 110), (94, 140), (96, 170), (70, 18), (90, 18),
                     (56, 28), (104, 28)], float)  # fmt: skip


def _synthetic_maps(
    people: list[np.ndarray], height: int = 200, width: int = 160
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps with a σ 2 blob (peak 1) at each joint, and each limb's field a unit vector in a 5 px band."""
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    heat, fields = np.zeros((height, width, 19)), np.zeros((height, width, 38))
    for joints in people:
        for part, (x, y) in enumerate(joints):
            heat[:, :, part] = np.maximum(heat[:, :, part], np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8))
        for (a, b), (cx, cy) in zip(openpose.PAIRS, openpose.FIELDS, strict=True):
            d = joints[b] - joints[a]
            u = d / np.linalg.norm(d)
            along = (xx - joints[a][0]) * u[0] + (yy - joints[a][1]) * u[1]
            across = np.abs((xx - joints[a][0]) * u[1] - (yy - joints[a][1]) * u[0])
            band = (along >= -1) & (along <= np.linalg.norm(d) + 1) & (across <= 2)
            fields[band, cx], fields[band, cy] = u[0], u[1]
    return heat, fields


def _people(heat: np.ndarray, fields: np.ndarray) -> list[np.ndarray]:
    found = openpose.joints(heat)
    candidates, rows = openpose.assemble(found, openpose.limbs(found, fields, heat.shape[0]))
    out = []
    for row in rows:
        ids = row[:18].astype(int)
        out.append(np.array([candidates[i, :2] if i >= 0 else (np.nan, np.nan) for i in ids]))
    return out


def test_peaks_and_limbs_give_back_a_known_skeleton() -> None:
    heat, fields = _synthetic_maps([SKELETON])
    (person,) = _people(heat, fields)
    assert np.array_equal(person, SKELETON)
    # a second, partial person to its right (no left arm): two people, each with their own joints
    other = SKELETON + np.array([170.0, 0.0])
    partial = other.copy()
    partial[[5, 6, 7]] = np.nan
    heat, fields = _synthetic_maps([SKELETON, other], width=340)
    keep = ~np.isin(np.arange(19), [5, 6, 7])
    heat[:, 170:, ~keep] = 0  # the left arm's joints of the second person are not there
    found = sorted(_people(heat, fields), key=lambda p: float(p[0, 0]))
    assert len(found) == 2
    assert np.array_equal(found[0], SKELETON)
    assert np.array_equal(found[1], partial, equal_nan=True)
    # too few joints (3 connected) is not a person
    heat, fields = _synthetic_maps([SKELETON])
    heat[:, :, [0, *range(4, 18)]] = 0
    assert _people(heat, fields) == []


def test_drawing_and_json_of_a_known_skeleton() -> None:
    height, width = 200, 160
    person = Person(SKELETON / [float(width), float(height)])
    canvas = openpose_draw.draw([person], height, width, body=True, hands=True, face=True)
    assert canvas.shape == (height, width, 3)
    assert canvas.dtype == np.uint8
    for part, (x, y) in enumerate(SKELETON.astype(int)):
        assert tuple(canvas[y, x]) == COLOURS[part]  # each joint a dot in its colour
    # the limb neck → right hip (limb 6) at 60 % of its colour, midway
    mid = ((SKELETON[1] + SKELETON[8]) / 2).astype(int)
    assert tuple(canvas[mid[1], mid[0]]) == tuple(int(c * 0.6) for c in COLOURS[6])
    assert canvas[195, 5].sum() == 0  # black elsewhere
    pose = openpose_draw.pose_json([person], height, width)
    assert pose["canvas_height"] == height
    assert pose["canvas_width"] == width
    (entry,) = pose["people"]  # type: ignore[misc]
    expected = [v for x, y in SKELETON for v in (x / width, y / height, 1.0)]
    assert entry["pose_keypoints_2d"] == pytest.approx(expected)
    assert entry["hand_left_keypoints_2d"] is None
    assert entry["face_keypoints_2d"] is None
    # missing body joints are zeros, and a hand's joints are red dots, its missing ones (at -1/size) not drawn
    body = person.body.copy()
    body[4] = np.nan
    hand = np.tile(SKELETON[:1], (21, 1)).astype(np.float32)
    hand[:, 0] += np.arange(21) * 6 - 60  # a row of joints 6 px apart
    hand[3] = (-1.0, -1.0)
    hand_frac = (hand / [width, height]).astype(np.float32)
    drawn = openpose_draw.draw([Person(body, hand_frac)], height, width, body=False, hands=True, face=False)
    for i, (x, y) in enumerate(hand.astype(int)):
        if i != 3:
            assert tuple(drawn[y, x]) == (0, 0, 255)
    (entry,) = openpose_draw.pose_json([Person(body, hand_frac)], height, width)["people"]  # type: ignore[misc]
    assert entry["pose_keypoints_2d"][12:15] == [0.0, 0.0, 0.0]
    assert entry["hand_left_keypoints_2d"][9:12] == [
        float(np.float32(-1 / width)),
        float(np.float32(-1 / height)),
        1.0,
    ]


def test_hand_and_face_boxes_from_the_body() -> None:
    body = np.full((18, 2), np.nan)
    body[[5, 6, 7]] = (100, 50), (100, 90), (100, 130)  # left arm: upper arm and forearm 40 px
    # side 1.5 × max(40, 0.9 × 40), centred a third of the forearm past the wrist
    assert openpose.hand_boxes(body, 400, 400) == [(70, 113, 60, True)]
    body[[2, 3, 4]] = (300, 50), (300, 60), (300, 70)  # right arm too short: a 15 px box is skipped
    assert openpose.hand_boxes(body, 400, 400) == [(70, 113, 60, True)]
    body[[2, 3, 4]] = (390, 300), (390, 340), (390, 380)  # clipped by the picture's corner
    assert openpose.hand_boxes(body, 400, 400)[1] == (360, 363, 36, False)  # 400 - 363.2 high
    assert openpose.face_box(body, 400, 400) is None  # no nose
    body[0], body[14], body[17] = (200, 100), (190, 95), (180, 100)  # eye offset 10 (×3), ear 20 (×1.5)
    assert openpose.face_box(body, 400, 400) == (170, 70, 60)
    body[14] = np.nan
    body[17] = (195, 100)  # half side 7.5: a 15 px box is skipped
    assert openpose.face_box(body, 400, 400) is None


def _blob_net(spots: list[tuple[float, float]], channels: int) -> openpose.Net:
    """A stand-in network: a σ 1 blob per spot (fractions of its input) at 1/8 of the input size."""

    def run(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2] // 8, x.shape[3] // 8
        yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        out = torch.zeros(1, channels, h, w)
        for c, (fx, fy) in enumerate(spots):
            out[0, c] = torch.exp(-((xx - (fx * w - 0.5)) ** 2 + (yy - (fy * h - 0.5)) ** 2) / 2)
        return out

    return run


def test_hand_and_face_points_follow_their_maps() -> None:
    rng = np.random.default_rng(0)
    spots = [(0.2 + 0.6 * rng.random(), 0.2 + 0.6 * rng.random()) for _ in range(21)]
    crop = rng.integers(0, 255, (80, 64, 3), dtype=np.uint8)
    points = openpose.hand_points(crop, _blob_net(spots, 22))
    assert points.shape == (21, 2)
    assert np.abs(points - np.array(spots) * [64, 80]).max() <= 2.5
    face = openpose.face_points(crop, _blob_net(spots[:5], 71))
    assert face.shape == (5, 2)  # only the maps above the threshold give a landmark
    assert np.abs(face - np.array(spots[:5]) * [64, 80]).max() <= 2.5


def test_openpose_full_through_the_registry(models: Path, states: dict[str, dict[str, torch.Tensor]]) -> None:
    roots = annotators.roots(models)
    image = _picture(1)
    out = preprocessors.detect("openpose", image, 64, roots=roots)
    assert out.shape == (77, 64, 3)
    assert out.dtype == np.uint8
    reference, pose = openpose.estimate(image, 64, lambda x: reference_body(states["body"], x), None, None)
    assert np.array_equal(out, reference)  # the file's weights, as the independent forward
    assert pose["canvas_height"] == 128  # the padded picture
    assert pose["canvas_width"] == 64
    assert pose["people"]  # random weights find "people" here: the comparison means something
    # openpose_full with a body network that finds nobody (its last heatmaps all below zero): a black map
    quiet = models.parent / "quiet" / annotators.OWN_FOLDER / "openpose"
    quiet.mkdir(parents=True)
    body = dict(states["body"])
    body["Mconv7_stage6_L2.bias"] = torch.full((19,), -1e6)
    torch.save(body, quiet / "body_pose_model.pth")
    for kind in ("hand", "face"):
        (quiet.parent / FILES[kind]).symlink_to(models / annotators.OWN_FOLDER / FILES[kind])
    full = preprocessors.detect("openpose_full", image, 64, roots=[quiet.parent])
    assert full.shape == (77, 64, 3)
    assert full.dtype == np.uint8
    assert not full.any()


def test_listed_only_where_the_files_are(models: Path, tmp_path: Path) -> None:
    everything = preprocessors.module_list(roots=annotators.roots(models))
    names = ("openpose", "openpose_face", "openpose_faceonly", "openpose_full", "openpose_hand")
    assert set(names) <= set(everything)
    assert everything.index("openpose_full") < everything.index("openpose")  # priority 100 first
    assert preprocessors.find("openpose_full").module_detail()["sliders"][0]["name"] == "Resolution"
    # the legacy table hides openpose_hand's resolution, but the wrapper keeps the class's slider
    assert [s.label for s in preprocessors.find("openpose_hand").sliders] == ["Resolution"]
    bare = tmp_path / "models"
    assert not set(names) & set(preprocessors.module_list(roots=annotators.roots(bare)))
    # only the body file: openpose alone
    folder = bare / annotators.OWN_FOLDER / "openpose"
    folder.mkdir(parents=True)
    (folder / "body_pose_model.pth").symlink_to(models / annotators.OWN_FOLDER / openpose.BODY)
    listed = preprocessors.module_list(roots=annotators.roots(bare))
    assert "openpose" in listed
    assert not {"openpose_hand", "openpose_face", "openpose_full"} & set(listed)
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("openpose_hand", _picture(), 64, roots=annotators.roots(bare))
    assert refused.value.field == "module"
    assert "hand_pose_model.pth" in refused.value.message


@pytest.mark.parametrize(("wrong", "instead"), [("body", "hand"), ("hand", "face")])
def test_a_wrong_file_is_refused_naming_it(models: Path, tmp_path: Path, wrong: str, instead: str) -> None:
    folder = tmp_path / "models" / annotators.OWN_FOLDER / "openpose"
    folder.mkdir(parents=True)
    for kind in ("body", "hand"):  # the wrong one is another network's file under its name
        target = folder / FILES[kind].split("/")[1]
        target.symlink_to(models / annotators.OWN_FOLDER / FILES[instead if kind == wrong else kind])
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("openpose_hand", _picture(), 64, roots=[folder.parent])
    assert refused.value.field == "module"
    assert str(folder / FILES[wrong].split("/")[1]) in refused.value.message
    assert f"not the OpenPose {wrong} network" in refused.value.message
