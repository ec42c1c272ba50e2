"""The weight-free ControlNet preprocessors (``latentstudio.control.preprocessors``) against
sd-webui-controlnet's semantics (Mikubill/sd-webui-controlnet, main branch, commit 56cec5b2): names,
sliders and defaults as its ``module_detail`` gives them, the refusals, and each module's output, checked
against an independent computation written here from the extension's documented behaviour, or, where that
would only repeat the code, against properties that fail when the semantics are wrong. All images are
generated here.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from latentstudio.control.preprocessors import (
    PREPROCESSORS,
    Preprocessor,
    Slider,
    detect,
    find,
    module_detail,
    module_list,
    numpy_seed,
    unavailable,
)
from latentstudio.core import FieldError

# Paths below are in the extension's repository.
# scripts/supported_preprocessor.py:31-35: PreprocessorParameter defaults (min 0, max 1, step 0.01,
# value 0.5); :83-90: the class-level Resolution slider (64..2048, 512, step 8) every preprocessor has unless
# it sets its own. scripts/preprocessor/legacy/legacy_preprocessors.py:54-62 assigns ``self.resolution`` (not
# ``slider_resolution``), so the legacy modules keep that default Resolution slider in module_detail.
RES = ("Resolution", 64, 2048, 512, 8)
EXPECTED: dict[str, tuple[tuple[str, ...], tuple | None, tuple | None, tuple | None, bool]] = {
    # name: (aliases, resolution slider, threshold_a slider, threshold_b slider, uses processor_res)
    # slider = (label, min, max, default, step)
    # scripts/preprocessor/model_free_preprocessors.py
    "none": ((), RES, None, None, False),  # :11-14
    "canny": ((), RES, ("Low Threshold", 1, 255, 100, 1), ("High Threshold", 1, 255, 200, 1), True),  # :30-48
    "invert": (("invert (from white bg & black line)",), None, None, None, False),  # :67-78, no resolution
    "blur_gaussian": ((), RES, ("Sigma", 0.01, 64.0, 9.0, 0.01), None, True),  # :92-97
    "scribble_xdog": ((), RES, ("XDoG Threshold", 1, 64, 32, 0.01), None, True),  # :116-121
    "shuffle": ((), None, None, None, False),  # :146-152 (resolution hidden, fixed 512)
    # scripts/preprocessor/legacy/preprocessor_compiled.py
    "lineart_standard": (("lineart_standard (from white bg & black line)",), RES, None, None, True),  # :565
    "recolor_intensity": ((), RES, ("Gamma Correction", 0.1, 2.0, 1.0, 0.001), None, False),  # :779
    "recolor_luminance": ((), RES, ("Gamma Correction", 0.1, 2.0, 1.0, 0.001), None, False),  # :801
    "color": (("t2ia_color_grid",), RES, None, None, True),  # :1187
    "threshold": ((), RES, ("Binarization Threshold", 0, 255, 127, 0.01), None, True),  # :1241
    "tile_colorfix": ((), RES, ("Variation", 3.0, 32.0, 8.0, 1.0), None, False),  # :1265
    "tile_colorfix+sharp": (
        (),
        RES,
        ("Variation", 3.0, 32.0, 8.0, 1.0),
        ("Sharpness", 0.0, 2.0, 1.0, 0.01),
        False,
    ),  # :1287
    "tile_resample": ((), RES, ("Down Sampling Rate", 1.0, 8.0, 1.0, 0.01), None, False),  # :1315
    # scripts/preprocessor/inpaint.py: slider_resolution invisible, no other slider
    "inpaint": (("inpaint_global_harmonious",), None, None, None, False),
    "inpaint_only": ((), None, None, None, False),
}
# get_sorted_preprocessors (scripts/supported_preprocessor.py:131-137): "none" first, then descending by
# str(sorting_priority).zfill(8) + label; priorities: canny 100, invert 20, none 10, the legacy ones from
# their "priority" (lineart_standard, recolor_luminance, tile_resample 100), inpaint_only 100, the rest 0.
EXPECTED_ORDER = [
    "none",
    "tile_resample",
    "recolor_luminance",
    "lineart_standard",
    "inpaint_only",
    "canny",
    "invert",
    "tile_colorfix+sharp",
    "tile_colorfix",
    "threshold",
    "color",  # label t2ia_color_grid
    "shuffle",
    "scribble_xdog",
    "recolor_intensity",
    "inpaint",  # label inpaint_global_harmonious
    "blur_gaussian",
]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def noise_image(h: int, w: int, seed: int = 0, blur: float = 0.0) -> np.ndarray:
    img = _rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), blur) if blur else img


def line_drawing(h: int, w: int) -> np.ndarray:
    """Black strokes on white."""
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.line(img, (5, 7), (w - 9, h - 4), (0, 0, 0), 3)
    cv2.rectangle(img, (w // 4, h // 4), (w // 2, h // 2), (30, 30, 30), 2)
    return img


def processed_size(h: int, w: int, res: int) -> tuple[int, int]:
    """Short side to ``res``, each side rounded half to even (np.round), as resize_image_with_pad."""
    k = res / min(h, w)
    return int(np.round(h * k)), int(np.round(w * k))


def reference_resize(img: np.ndarray, res: int) -> np.ndarray:
    h, w = processed_size(*img.shape[:2], res)
    interpolation = cv2.INTER_CUBIC if res / min(img.shape[:2]) > 1 else cv2.INTER_AREA
    return cv2.resize(img, (w, h), interpolation=interpolation)


def edge_padded(img: np.ndarray) -> np.ndarray:
    """Padded right and bottom to multiples of 64 by repeating the last row/column (clamped indices)."""
    h, w = img.shape[:2]
    rows = np.minimum(np.arange(-(-h // 64) * 64), h - 1)
    cols = np.minimum(np.arange(-(-w // 64) * 64), w - 1)
    return img[rows][:, cols]


# ---------------------------------------------------------------- registry, sliders, order


def _slider(p: Preprocessor, which: str) -> tuple | None:
    s = getattr(p, which)
    return None if s is None else (s.label, s.minimum, s.maximum, s.default, s.step)


MIDAS, MLSD = "midas/dpt_hybrid-midas-501f0c75.pt", "mlsd/mlsd_large_512_fp32.pth"
PIDI = "pidinet/table5_pidinet.pth"
_SAFE_STEPS = Slider("Safe Steps", 0, 10, 2, 1)
_NORMAL_BG = Slider("Normal Background Threshold", 0.0, 1.0, 0.4)
_NEAR = Slider("Remove Near %", 0, 100, 0, 0.1)
BODY, HAND, FACE = (f"openpose/{name}.pth" for name in ("body_pose_model", "hand_pose_model", "facenet"))


def test_the_registry_matches_the_extensions_table() -> None:
    assert {name for name, p in PREPROCESSORS.items() if not p.files} == set(EXPECTED)
    # the weight-needing ones that run here (test_control_hed): legacy name, label, sliders, tags
    hed = {name: (p.aliases, _slider(p, "resolution"), p.threshold_a, p.tags, p.files)
           for name, p in PREPROCESSORS.items() if p.files}  # fmt: skip
    assert hed == {
        "hed": (("softedge_hed",), RES, None, ("SoftEdge",), ("hed/ControlNetHED.pth",)),
        "hed_safe": (("softedge_hedsafe",), RES, None, ("SoftEdge",), ("hed/ControlNetHED.pth",)),
        "scribble_hed": ((), RES, None, ("Scribble", "SparseCtrl"), ("hed/ControlNetHED.pth",)),
        "lineart": (("lineart_realistic",), RES, None, ("Lineart",), ("lineart/sk_model.pth",)),
        "lineart_coarse": ((), RES, None, ("Lineart",), ("lineart/sk_model2.pth",)),
        "mlsd": ((), RES, Slider("MLSD Value Threshold", 0.01, 2.0, 0.1), ("MLSD",), (MLSD,)),
        "depth": (("depth_midas",), RES, None, ("Depth",), (MIDAS,)),
        "normal_map": (("normal_midas",), RES, _NORMAL_BG, ("NormalMap",), (MIDAS,)),
        # the legacy table hides openpose_face/_faceonly/_hand's resolution, but only in self.resolution:
        # module_detail shows the class's Resolution slider and processor_res reaches them all
        "openpose": ((), RES, None, ("OpenPose",), (BODY,)),
        "openpose_face": ((), RES, None, ("OpenPose",), (BODY, FACE)),
        "openpose_faceonly": ((), RES, None, ("OpenPose",), (BODY, FACE)),
        "openpose_full": ((), RES, None, ("OpenPose",), (BODY, HAND, FACE)),
        "openpose_hand": ((), RES, None, ("OpenPose",), (BODY, HAND)),
        "depth_anything": ((), RES, None, ("Depth",), ("depth_anything/depth_anything_vitl14.pth",)),
        "depth_anything_v2": (
            (),
            RES,
            None,
            ("Depth",),
            ("depth_anything_v2/depth_anything_v2_vitl.safetensors",),
        ),
        "lineart_anime": ((), RES, None, ("Lineart",), ("lineart_anime/netG.pth",)),
        "normal_bae": ((), RES, None, ("NormalMap",), ("normal_bae/scannet.pt",)),
        "depth_leres": ((), RES, _NEAR, ("Depth",), ("leres/res101.pth",)),
        "depth_leres++": ((), RES, _NEAR, ("Depth",), ("leres/res101.pth", "leres/latest_net_G.pth")),
        "segmentation": (
            ("seg_ufade20k",),
            RES,
            None,
            ("Segmentation",),
            ("uniformer/upernet_global_small.pth",),
        ),
        "lineart_anime_denoise": ((), RES, None, ("Lineart",), ("manga_line/erika.pth",)),
        "inpaint_only+lama": ((), None, None, ("Inpaint",), ("lama/ControlNetLama.pth",)),
        "anime_face_segment": (
            ("seg_anime_face",),
            RES,
            None,
            ("Segmentation",),
            ("anime_face_segment/UNet.pth",),
        ),
        "pidinet": (("softedge_pidinet",), RES, None, ("SoftEdge",), (PIDI,)),
        "pidinet_safe": (("softedge_pidisafe",), RES, None, ("SoftEdge",), (PIDI,)),
        "pidinet_scribble": (("scribble_pidinet",), RES, None, ("Scribble", "SparseCtrl"), (PIDI,)),
        "pidinet_sketch": (("t2ia_sketch_pidi",), RES, None, ("T2I-Adapter",), (PIDI,)),
        # not legacy preprocessors: scripts/preprocessor/teed.py sets their sliders
        "softedge_teed": ((), RES, _SAFE_STEPS, ("SoftEdge",), ("TEED/7_model.pth",)),
        "softedge_anyline": (
            (),
            ("Resolution", 64, 2048, 1280, 8),
            _SAFE_STEPS,
            ("SoftEdge",),
            ("TEED/MTEED.pth",),
        ),
    }
    for name, (aliases, res, a, b, uses_res) in EXPECTED.items():
        p = PREPROCESSORS[name]
        assert p.name == name
        assert p.aliases == aliases, name
        assert (_slider(p, "resolution"), _slider(p, "threshold_a"), _slider(p, "threshold_b")) == (res, a, b)
        assert p.uses_resolution is uses_res, name
        assert p.accepts_mask is name.startswith("inpaint"), name  # accepts_mask (and requires_mask) there
        assert ("Inpaint" in p.tags) is p.accepts_mask, name
        for alias in aliases:
            assert find(alias) is p


def test_module_list_and_detail_as_the_api_gives_them() -> None:
    assert module_list() == EXPECTED_ORDER
    labels = module_list(alias_names=True)
    assert labels[3] == "lineart_standard (from white bg & black line)"
    assert labels[6] == "invert (from white bg & black line)"
    assert labels[10] == "t2ia_color_grid"
    assert labels[-2] == "inpaint_global_harmonious"
    # the extension's own web API test (tests/web_api/modules_test.py) pins canny's detail:
    assert module_detail()["canny"] == {
        "model_free": False,
        "sliders": [
            {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
            {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
            {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
        ],
    }
    assert module_detail()["invert"]["sliders"] == []
    assert module_detail()["shuffle"]["sliders"] == []
    assert [s["name"] for s in module_detail(True)["t2ia_color_grid"]["sliders"]] == ["Resolution"]


def test_defaults_are_what_none_and_minus_one_give() -> None:
    img = noise_image(96, 128, blur=2)
    for name, (_, res, a, b, _) in EXPECTED.items():
        explicit = detect(
            name, img, res[3] if res else None, a[3] if a else None, b[3] if b else None, seed=7
        )
        assert np.array_equal(detect(name, img, seed=7), explicit), name
        assert np.array_equal(detect(name, img, -1, -1, -1, seed=7), explicit), name


# ---------------------------------------------------------------- refusals


def test_unknown_module_is_refused_with_the_allowed_names() -> None:
    with pytest.raises(FieldError) as e:
        detect("canny_edges", noise_image(8, 8))
    assert e.value.field == "module"
    assert all(name in e.value.message for name in EXPECTED)
    with pytest.raises(FieldError):
        detect("scribble_thr", noise_image(8, 8))  # never registered by the extension


@pytest.mark.parametrize(
    ("module", "files"),
    [
        ("dw_openpose_full", "dw-ll_ucoco_384.onnx, yolox_l.onnx"),
        ("animal_openpose", "rtmpose-m_ap10k_256.onnx, yolox_l.onnx"),
        ("densepose_parula", "densepose_r50_fpn_dl.torchscript"),
    ],
)
def test_annotators_that_are_programs_are_never_run(module: str, files: str, tmp_path: Path) -> None:
    """ONNX and TorchScript files hold programs: refused by name even with the files in place."""
    for name in files.split(", "):
        folder = tmp_path / ("densepose" if name.endswith(".torchscript") else "openpose")
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"not run")
    with pytest.raises(FieldError) as e:
        detect(module, noise_image(8, 8), roots=(tmp_path,))
    assert e.value.field == "module"
    assert f"({files}," in e.value.message
    assert "never runs" in e.value.message
    assert module in unavailable((tmp_path,))


@pytest.mark.parametrize(
    ("module", "args", "field"),
    [
        ("canny", (63, None, None), "processor_res"),
        ("canny", (2049, None, None), "processor_res"),
        ("none", (10, None, None), "processor_res"),
        ("color", (0, None, None), "processor_res"),
        ("canny", (None, 0, None), "threshold_a"),
        ("canny", (None, 256, None), "threshold_a"),
        ("canny", (None, None, 0.5), "threshold_b"),
        ("blur_gaussian", (None, 0.0, None), "threshold_a"),
        ("blur_gaussian", (None, math.nan, None), "threshold_a"),
        ("scribble_xdog", (None, 65, None), "threshold_a"),
        ("threshold", (None, -0.5, None), "threshold_a"),
        ("recolor_luminance", (None, 2.5, None), "threshold_a"),
        ("tile_colorfix", (None, 2.9, None), "threshold_a"),
        ("tile_colorfix+sharp", (None, None, 2.01), "threshold_b"),
        ("tile_resample", (None, 8.5, None), "threshold_a"),
        ("tile_resample", (None, math.inf, None), "threshold_a"),
    ],
)
def test_out_of_range_parameters_are_refused(module: str, args: tuple, field: str) -> None:
    with pytest.raises(FieldError) as e:
        detect(module, noise_image(16, 16), *args)
    assert e.value.field == field


def test_parameters_a_module_does_not_have_are_ignored() -> None:
    img = noise_image(40, 50)
    assert np.array_equal(detect("invert", img, 99999, -7, 1e9), 255 - img)
    assert np.array_equal(detect("canny", img, 512, 10, 20), detect("canny", img, 512, 10, 20, seed=3))
    assert np.array_equal(detect("shuffle", img, 5, 1e9, seed=1), detect("shuffle", img, seed=1))


def test_bad_images_and_seeds_are_refused() -> None:
    for bad in (
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ):
        with pytest.raises(FieldError) as e:
            detect("invert", bad)
        assert e.value.field == "image"
    with pytest.raises(FieldError) as e:
        detect("shuffle", noise_image(8, 8), seed=-1)
    assert e.value.field == "seed"


def test_grey_and_rgba_inputs_are_converted_as_hwc3() -> None:
    grey = _rng().integers(0, 256, (10, 12), dtype=np.uint8)
    assert np.array_equal(detect("none", grey), np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = [[0, 255], [128, 64]]  # alpha over white: 100·a + 255·(1 − a), truncated
    out = detect("none", rgba)
    assert out[0, 0].tolist() == [255] * 3
    assert out[0, 1].tolist() == [100] * 3
    assert out[1, 0, 0] == math.floor(100 * 128 / 255 + 255 * (1 - 128 / 255))


# ---------------------------------------------------------------- the resize to the processor resolution


@pytest.mark.parametrize(("h", "w", "res"), [(300, 450, 512), (300, 450, 200), (97, 61, 64), (200, 301, 100)])
def test_resize_to_the_processor_resolution(h: int, w: int, res: int) -> None:
    """blur_gaussian with sigma 0.01 is a 1-pixel kernel: its output is the resized image itself, which shows
    the rule: short side to ``res``, sides rounded half to even (301 × 0.5 → 150), cubic up, area down."""
    img = noise_image(h, w, seed=h)
    out = detect("blur_gaussian", img, res, 0.01)
    assert out.shape == (*processed_size(h, w, res), 3)
    assert np.array_equal(out, reference_resize(img, res))
    if (h, w, res) == (200, 301, 100):
        assert out.shape[:2] == (100, 150)
    for name in ("canny", "scribble_xdog", "threshold", "lineart_standard"):
        assert detect(name, img, res).shape == out.shape, name


# ---------------------------------------------------------------- each module


def test_none_and_invert() -> None:
    img = noise_image(33, 47)
    assert np.array_equal(detect("none", img), img)
    assert detect("none", img) is not img
    assert np.array_equal(detect("invert", img), 255 - img)
    assert np.array_equal(detect("invert (from white bg & black line)", img), 255 - img)


@pytest.mark.parametrize(("low", "high"), [(100, 200), (20, 60), (1, 255), (50, 120), (50.9, 120.7)])
@pytest.mark.parametrize(("h", "w", "res"), [(150, 230, 256), (227, 246, 100)])
def test_canny_runs_on_the_edge_padded_resize(h: int, w: int, res: int, low: float, high: float) -> None:
    """Thresholds truncated to int; Canny on the resize padded to multiples of 64, cropped afterwards (edges
    that reach the padding can link weak edges inside, so cropping first would differ)."""
    img = noise_image(h, w, blur=1.5)
    out = detect("canny", img, res, low, high)
    size = processed_size(h, w, res)
    resized = reference_resize(img, res)
    expected = cv2.Canny(edge_padded(resized), int(low), int(high))[: size[0], : size[1]]
    assert out.shape == (*size, 3)
    for c in range(3):
        assert np.array_equal(out[:, :, c], expected)
    if (h, low) == (227, 50):  # here the padding changes the result: the test sees where Canny runs
        assert not np.array_equal(expected, cv2.Canny(resized, 50, 120))


def test_canny_edges_shrink_as_thresholds_rise() -> None:
    img = noise_image(128, 160, blur=1.5)
    previous = None
    for low, high in [(10, 30), (40, 80), (80, 160), (150, 250)]:
        edges = detect("canny", img, 128, low, high)[:, :, 0] > 0
        if previous is not None:
            assert not (edges & ~previous).any()  # a subset
            assert edges.sum() <= previous.sum()
        previous = edges


def test_blur_gaussian_uses_sigma_on_the_cropped_resize() -> None:
    img = noise_image(120, 90, seed=2)
    for sigma in (0.5, 3.0, 9.0):
        expected = cv2.GaussianBlur(reference_resize(img, 128), (0, 0), sigma)
        assert np.array_equal(detect("blur_gaussian", img, 128, sigma), expected)
    spread = [detect("blur_gaussian", img, 128, s).std() for s in (0.5, 2, 8, 32)]
    assert spread == sorted(spread, reverse=True)


def test_scribble_xdog() -> None:
    img = line_drawing(128, 192)
    out = detect("scribble_xdog", img, 128, 32)
    padded = edge_padded(reference_resize(img, 128)).astype(np.float32)
    darkening = np.min(cv2.GaussianBlur(padded, (0, 0), 5.0) - cv2.GaussianBlur(padded, (0, 0), 0.5), axis=2)
    # the extension stores 255 − darkening as uint8 (clipped, truncated), then doubles 255 − that in uint8
    kept = 255 - np.clip(255 - darkening, 0, 255).astype(np.uint8).astype(np.int64)
    expected = np.where((2 * kept) % 256 > 32, 255, 0)[:128, :192]
    assert np.array_equal(out[:, :, 0], expected)
    assert np.array_equal(out[:, :, 2], expected)
    assert out[:, :, 0][img[:, :, 0] == 0].mean() > 128  # the strokes come out white
    assert not detect("scribble_xdog", np.full((64, 64, 3), 255, np.uint8), 64).any()
    counts = [int((detect("scribble_xdog", img, 128, t) > 0).sum()) for t in (1, 16, 32, 64)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]


def test_threshold_is_the_darkest_channel_above_the_level() -> None:
    img = noise_image(128, 192, seed=4)  # short side = resolution and multiples of 64: no resize, no pad
    for level in (0, 64.5, 127, 254.9, 255):
        expected = np.where(img.min(axis=2) > level, 255, 0)
        out = detect("threshold", img, 128, level)
        assert all(np.array_equal(out[:, :, c], expected) for c in range(3))
    whites = [int((detect("threshold", img, 128, t) > 0).sum()) for t in (0, 50, 100, 200)]
    assert whites == sorted(whites, reverse=True)


def test_shuffle_is_seeded_and_fixed_at_512() -> None:
    img = noise_image(100, 150, blur=1)
    a = detect("shuffle", img, seed=1234)
    assert a.shape == (512, 768, 3)  # processor_res ignored: the extension fixes 512
    assert np.array_equal(a, detect("shuffle", img, 64, seed=1234))
    assert not np.array_equal(a, detect("shuffle", img, seed=1235))
    assert not np.array_equal(detect("shuffle", img), detect("shuffle", img))  # unseeded: fresh entropy
    flat = np.full((70, 90, 3), 77, np.uint8)
    assert (detect("shuffle", flat, seed=0) == 77).all()


def _noise_disk_global(h: int, w: int) -> np.ndarray:
    """The documented noise field, drawn from numpy's global RandomState as the extension does: one
    uniform value per 256-pixel cell (+2), cubic-resized to the image + 256 each side, cropped, stretched to
    [0, 1]."""
    grid = np.random.uniform(0, 1, size=(h // 256 + 2, w // 256 + 2, 1))  # global state, as the extension
    big = cv2.resize(grid, (w + 512, h + 512), interpolation=cv2.INTER_CUBIC)[256 : 256 + h, 256 : 256 + w]
    return (big - big.min()) / (big - big.min()).max()


def test_shuffle_matches_the_global_numpy_seed_the_extension_sets() -> None:
    img = noise_image(64, 96, seed=9)
    seed = numpy_seed(1000, 234)
    np.random.seed(seed)  # set_numpy_seed (scripts/controlnet.py:150-171) does exactly this
    x = _noise_disk_global(512, 768) * 767
    y = _noise_disk_global(512, 768) * 511
    base = reference_resize(img, 512)
    expected = cv2.remap(base, np.stack([x, y], axis=2).astype(np.float32), None, cv2.INTER_LINEAR)
    assert np.array_equal(detect("shuffle", img, seed=seed), expected)


def test_numpy_seed() -> None:
    assert numpy_seed(1000, 234) == 1234
    assert numpy_seed(-5, 7) == 7
    assert numpy_seed(2**32 - 1, 2) == 1


def test_tile_resample() -> None:
    img = noise_image(120, 90, seed=5)
    for rate in (1.0, 1.05, 1.099):
        assert np.array_equal(detect("tile_resample", img, None, rate), img)
    half = detect("tile_resample", img, None, 2.0)
    block_mean = img.reshape(60, 2, 45, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert half.shape == (60, 45, 3)
    assert np.abs(half - block_mean).max() <= 1
    assert detect("tile_resample", img, None, 1.1).shape == (109, 81, 3)  # int(120 / 1.1), int(90 / 1.1)
    assert detect("tile_resample", img, None, 7.3).shape == (16, 12, 3)
    with pytest.raises(FieldError) as e:
        detect("tile_resample", noise_image(5, 40), None, 8.0)
    assert e.value.field == "threshold_a"


def test_tile_colorfix_passes_the_image_through() -> None:
    img = noise_image(30, 20)
    assert np.array_equal(detect("tile_colorfix", img, None, 3.0), img)
    assert np.array_equal(detect("tile_colorfix+sharp", img, None, 32.0, 0.0), img)


def test_color_grid() -> None:
    blocks = _rng(3).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(blocks, 64, axis=0), 64, axis=1)  # 256 × 384 of 64-pixel blocks
    assert np.array_equal(detect("color", img, 256), img)  # cubic samples at block centres, nearest back
    out = detect("color", noise_image(200, 333, seed=6), 128)
    assert out.shape == (128, 213, 3)  # short side 128, long side round(333 / 200 × 128)
    # a grid of (213 // 64) × (128 // 64) colours stretched over the image: 3 distinct columns, 2 rows
    assert len(np.unique(out, axis=1)[0]) == 3
    assert len(np.unique(out, axis=0)) == 2
    assert detect("color", noise_image(50, 75, seed=7), 128).shape == (128, 192, 3)  # enlarging too
    for img, res in ((noise_image(384, 600, seed=9), 128), (noise_image(50, 75, seed=7), 128)):
        h, w = (res, round(img.shape[1] / img.shape[0] * res))
        short = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)  # area both ways, unlike the others
        grid = cv2.resize(short, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC)
        expected = cv2.resize(grid, (w, h), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(detect("color", img, res), expected)
    assert detect("color", noise_image(90, 60, seed=8), 64).shape == (96, 64, 3)


def _lineart_reference(img: np.ndarray, res: int) -> np.ndarray:
    """How much darker than its sigma-6 surroundings (min over channels, on the padded resize, clipped to
    0..255), over the median of the values above 8 (at least 16; 16 when none), × 127, truncated."""
    h, w = processed_size(*img.shape[:2], res)
    x = edge_padded(reference_resize(img, res)).astype(np.float32)
    darker = np.clip(np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2), 0, 255)
    strong = darker[darker > 8]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
    return np.clip(darker / scale * 127, 0, 255).astype(np.uint8)[:h, :w]


def test_lineart_standard() -> None:
    img = line_drawing(128, 192)
    out = detect("lineart_standard", img, 128)
    assert np.array_equal(out[:, :, 0], _lineart_reference(img, 128))
    assert np.array_equal(out[:, :, 1], out[:, :, 0])
    assert np.array_equal(out[:, :, 2], out[:, :, 0])
    assert out[:, :, 0][img[:, :, 0] == 0].mean() > 100 > out[:, :, 0][img[:, :, 0] == 255].mean()
    assert not detect("lineart_standard", np.full((64, 64, 3), 255, np.uint8), 64).any()
    faint = np.full((64, 64, 3), 255, np.uint8)
    faint[30:33] = 250  # darkening ≤ 8 everywhere: no median, divided by 16
    out = detect("lineart_standard", faint, 64)[:, :, 0]
    assert np.array_equal(out, _lineart_reference(faint, 64))
    assert 0 < out.max() < 127
    scribble = detect("lineart_standard", noise_image(100, 140, seed=13, blur=1.5), 96)[:, :, 0]
    assert np.array_equal(scribble, _lineart_reference(noise_image(100, 140, seed=13, blur=1.5), 96))


def _cie_l8(v: np.ndarray) -> np.ndarray:
    """8-bit L of sRGB colours: CIE L* of the linear luminance, scaled to 0..255."""
    c = v / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    lstar = np.where(y > 0.008856, 116 * np.cbrt(y) - 16, 903.3 * y)
    return lstar * 255 / 100


def test_recolor_luminance_reads_the_image_as_bgr() -> None:
    colours = np.array([[[255, 0, 0], [0, 0, 255], [0, 255, 0], [128, 128, 128], [10, 200, 90]]], np.uint8)
    out = detect("recolor_luminance", colours)[0, :, 0].astype(float)
    as_bgr = _cie_l8(colours[0, :, ::-1].astype(float))  # the extension converts RGB with COLOR_BGR2LAB
    assert np.abs(out - as_bgr).max() <= 2
    assert out[0] < 90  # pure red reads as blue's lightness (≈82)
    assert out[1] > 130  # and blue as red's (≈136)
    grey = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    base = detect("recolor_luminance", grey)[0, :, 0].astype(float)
    assert (np.diff(base) >= 0).all()
    for gamma in (0.1, 0.5, 2.0):
        curved = detect("recolor_luminance", grey, None, gamma)[0, :, 0].astype(float)
        assert np.abs(curved - np.floor(255 * (base / 255) ** gamma)).max() <= 1


def test_recolor_intensity_is_the_largest_channel_with_gamma() -> None:
    img = noise_image(20, 30, seed=11)
    v = img.max(axis=2).astype(np.float64)
    for gamma in (0.1, 1.0, 1.5, 2.0):
        out = detect("recolor_intensity", img, None, gamma)
        assert out.shape == img.shape
        assert (out[:, :, 0] == out[:, :, 2]).all()
        assert np.abs(out[:, :, 0] - np.floor(255 * (v / 255) ** gamma)).max() <= 1


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_module_returns_uint8_rgb(name: str) -> None:
    """RGB, or for the inpaint modules RGBA: the picture and its mask (zeros without one), unchanged."""
    picture = noise_image(70, 110, seed=12, blur=1)
    out = detect(name, picture, seed=0)
    assert out.dtype == np.uint8
    assert out.ndim == 3
    assert out.shape[2] == (4 if name.startswith("inpaint") else 3)
    assert out.flags["C_CONTIGUOUS"]
    if name.startswith("inpaint"):
        assert np.array_equal(out[:, :, :3], picture)
        assert (out[:, :, 3] == 0).all()
        mask = noise_image(70, 110, seed=13)
        assert np.array_equal(detect(name, picture, mask=mask)[:, :, 3], mask[:, :, 0])
