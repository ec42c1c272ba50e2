"""A1111's built-in scripts (issue 22): the plans they run (seeds, strengths, tiles) against A1111's
``scripts/`` semantics with a recording stand-in for the model, and the same scripts over real HTTP with a
tiny checkpoint."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from latentstudio import infotext
from latentstudio.core import FieldError
from latentstudio.pipeline.params import GenerationParams, Inpaint, Policy, ResolvedParams
from latentstudio.pipeline.run import GenerationResult
from latentstudio.pipeline.scripts import Model, ScriptContext, ScriptEnv, prepare, run_script
from latentstudio.pipeline.scripts.prompts_file import line_options
from latentstudio.pipeline.scripts.sd_upscale import combine_tiles, split_tiles
from tests.conftest import MakeTiny
from tests.sdapi_support import IMG2IMG_BASE, TXT2IMG_BASE, build_root, decode, generate, init_image_b64
from tests.serving import serve

UPSCALERS = ("None", "Lanczos", "Nearest")


def _checkpoint(query: str) -> str:
    if query not in ("tiny", "other"):
        raise FieldError("script_args", f"unknown checkpoint {query!r}")
    return query


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


class Recorder:
    """A stand-in model: records every generation's params and returns its init image (or a grey one)
    with an infotext naming its seed and strength."""

    def __init__(self) -> None:
        self.calls: list[ResolvedParams] = []
        self.models: list[Model] = []

    def generate(self, params: ResolvedParams, index: int, count: int, model: Model) -> GenerationResult:
        self.calls.append(params)
        self.models.append(model)
        grey = Image.new("RGB", (params.width, params.height), "grey")
        image = params.init_image if params.init_image is not None else grey
        n = params.batch_size * params.n_iter
        size = f"{params.width}x{params.height}"
        text = f"{params.prompt}\nSteps: {params.steps}, Seed: {params.seed}, Size: {size}"
        return GenerationResult(
            images=[image.copy()] * n, infotexts=[text] * n, seeds=[params.seed] * n,
            subseeds=[params.subseed] * n, params=params,
        )  # fmt: skip

    def context(self) -> ScriptContext:
        def upscale(image: Image.Image, name: str, scale: float) -> Image.Image:
            size = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
            return image.resize(size, Image.Resampling.LANCZOS)

        return ScriptContext(generate=self.generate, upscale=upscale, upscalers=UPSCALERS)


def _scripted(
    params: GenerationParams, name: str, args: list[Any], random_seed: bool = False
) -> ResolvedParams:
    env = ScriptEnv(upscalers=UPSCALERS, checkpoint=_checkpoint, vaes=("a.vae.pt",))
    return prepare(name, args, params.resolved(), policy=Policy(), env=env, random_seed=random_seed)


# -- SD upscale ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "tile", "overlap"), [(128, 64, 8), (200, 64, 16), (64, 64, 0), (96, 64, 32)]
)
def test_tiles_cover_the_image_and_blend_back_to_it(size: int, tile: int, overlap: int) -> None:
    grid = split_tiles(size, size, tile, tile, overlap)
    starts = [x for x in grid.rows[0][1]]
    # A1111 split_grid: ceil((W − overlap)/(tile − overlap)) columns, the first at 0, the last flush
    assert len(starts) == max(1, math.ceil((size - overlap) / (tile - overlap)))
    assert starts[0] == 0
    assert starts[-1] == size - tile
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))
    image = _noise_image(size, size)
    tiles = [image.crop((x, y, x + tile, y + tile)) for y, xs in grid.rows for x in xs]
    assert np.array_equal(np.asarray(combine_tiles(grid, tiles)), np.asarray(image))


def test_overlap_blends_with_a_linear_ramp() -> None:
    grid = split_tiles(120, 64, 64, 64, 8)  # two columns: x = 0 and 56
    assert grid.rows == ((0, (0, 56)),)
    out = np.asarray(
        combine_tiles(grid, [Image.new("RGB", (64, 64), "black"), Image.new("RGB", (64, 64), "white")])
    )
    ramp = out[0, 56:64, 0].astype(int)
    expected = [int(i * 255 / 8) for i in range(8)]  # the right tile's weight at overlap column i
    assert np.abs(ramp - np.array(expected)).max() <= 1
    assert (out[:, :56] == 0).all()
    assert (out[:, 64:] == 255).all()


def test_sd_upscale_plan_follows_a1111_seeds_and_tiles() -> None:
    init = _noise_image(64, 64, seed=1)
    params = GenerationParams("p", width=48, height=48, init_image=init, seed=100, batch_size=2, n_iter=2)
    scripted = _scripted(params, "SD UPSCALE", ["", 16, "lanczos", 2])
    recorder = Recorder()
    result = run_script(scripted, recorder.context())
    # 128×128 in 48² tiles overlapping by 16: 4 columns × 4 rows; each tile alone, n_iter upscales
    assert len(recorder.calls) == 2 * 16
    assert all(c.init_image is not None and c.init_image.size == (48, 48) for c in recorder.calls)
    # batch b (of 2 tiles) starts at seed + n + b; its second tile one later (A1111's loop)
    first = [c.seed for c in recorder.calls[:16]]
    assert first == [100 + b + j for b in range(8) for j in range(2)]
    assert [c.seed for c in recorder.calls[16:18]] == [101, 102]
    assert len(result.images) == 2
    assert result.images[0].size == (128, 128)
    upscaled = init.resize((128, 128), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(upscaled))  # identity model: no seams
    parsed = infotext.parse(result.infotexts[0])
    assert (parsed["SD upscale overlap"], parsed["SD upscale upscaler"], parsed["Size-1"]) == (
        "16",
        "Lanczos",
        "48",
    )
    assert result.seeds == [100, 101]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["", 48, "Lanczos", 2], "script_args.1"),  # overlap ≥ tile
        (["", 8, "ESRGAN_4x", 2], "script_args.2"),
        (["", 8, 7, 2], "script_args.2"),
        (["", 8, "Lanczos", "2"], "script_args.3"),
        (["", 8, "Lanczos", 2, "extra"], "script_args"),
        (["", 40, "Lanczos", 16], "script_args.1"),  # 1024² in 48² tiles 8 apart: over 4096 generations
    ],
)
def test_sd_upscale_bad_args_name_the_argument(args: list[Any], field: str) -> None:
    params = GenerationParams("p", width=48, height=48, init_image=_noise_image(64, 64))
    with pytest.raises(FieldError) as e:
        _scripted(params, "SD upscale", args)
    assert e.value.field == field


def test_scripts_are_found_per_tab() -> None:
    with pytest.raises(FieldError, match="Script 'loopback' not found"):
        _scripted(GenerationParams("p", width=64, height=64), "loopback", [])
    with pytest.raises(FieldError, match="not found"):
        _scripted(GenerationParams("p", width=64, height=64), "x/y/z nope", [])


# -- Prompts from file or textbox ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a red cat", {"prompt": "a red cat"}),
        (
            '--prompt "a cat" on a mat --steps 5 --cfg_scale 3',
            {"prompt": "a cat on a mat", "steps": 5, "cfg_scale": 3.0},
        ),
        ("--negative_prompt blurry ugly --seed 7", {"negative_prompt": "blurry ugly", "seed": 7}),
        ("--steps five", {"prompt": "--steps five"}),  # int() fails: the line is the prompt
        ("a cat --with dashes", {"prompt": "a cat --with dashes"}),  # a token without --
        ('--prompt "unclosed', {"prompt": '--prompt "unclosed'}),  # shlex fails
        ("--steps", {"prompt": "--steps"}),  # no value
        ("--tiling true --width 128", {"tiling": True, "width": 128}),
        ("--unknown 1", {"prompt": "--unknown 1"}),
    ],
)
def test_line_options_follow_a1111_cmdargs(line: str, expected: dict[str, Any]) -> None:
    assert line_options(line) == expected


def test_prompts_from_file_seeds_and_prompt_positions() -> None:
    base = GenerationParams("base", negative_prompt="neg", width=64, height=64, seed=10, batch_size=2)
    text = "first\n\n  --prompt second --negative_prompt worse --steps 3\n--seed 99\n"
    for iterate, seeds in ((False, [10, 10, 99]), (True, [10, 12, 99])):
        recorder = Recorder()
        run_script(
            _scripted(base, "prompts from file or textbox", [iterate, False, "end", text]), recorder.context()
        )
        assert [c.seed for c in recorder.calls] == seeds
    assert [c.prompt for c in recorder.calls] == ["base first", "base second", "base"]
    assert [c.negative_prompt for c in recorder.calls] == ["neg", "neg worse", "neg"]
    assert [c.steps for c in recorder.calls] == [20, 3, 20]
    recorder = Recorder()
    run_script(
        _scripted(base, "Prompts from file or textbox", [False, False, "start", text]), recorder.context()
    )
    assert recorder.calls[1].prompt == "second base"


def test_prompts_from_file_random_seed_per_line_unless_asked_otherwise() -> None:
    base = GenerationParams("", width=64, height=64)
    lines = "a\nb\nc\nd"
    recorder = Recorder()
    run_script(
        _scripted(base, "prompts from file or textbox", [False, False, "start", lines], True),
        recorder.context(),
    )
    assert len({c.seed for c in recorder.calls}) == 4  # A1111: each line's process_images draws its own
    recorder = Recorder()
    run_script(
        _scripted(base, "prompts from file or textbox", [False, True, "start", lines], True),
        recorder.context(),
    )
    assert len({c.seed for c in recorder.calls}) == 1


@pytest.mark.parametrize(
    "line",
    [
        "--steps 0",
        "--sampler_name nope",
        "--sd_model other",
        "--outpath_samples /tmp/x",
        "--restore_faces true",
    ],
)
def test_prompts_from_file_refuses_bad_lines_up_front(line: str) -> None:
    with pytest.raises(FieldError) as e:
        _scripted(
            GenerationParams("p", width=64, height=64),
            "prompts from file or textbox",
            [False, False, "start", f"ok\n{line}"],
        )
    assert (e.value.field, e.value.message[:7]) == ("script_args.3", "line 2:")


# -- Loopback --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("curve", "shape"),
    [
        ("Linear", lambda x: x),
        ("Aggressive", lambda x: math.sin(x * math.pi / 2)),
        ("Lazy", lambda x: 1 - math.cos(x * math.pi / 2)),
    ],
)
def test_loopback_strengths_seeds_and_images(curve: str, shape: Any) -> None:
    mask = Image.new("L", (64, 64), 255)
    params = GenerationParams("p", width=64, height=64, init_image=_noise_image(64, 64), seed=5,
                              denoising_strength=0.8, inpaint=Inpaint(mask, fill=2))  # fmt: skip
    recorder = Recorder()
    result = run_script(_scripted(params, "loopback", [4, 0.2, curve, "None"]), recorder.context())
    strengths = [c.denoising_strength for c in recorder.calls]
    assert strengths == pytest.approx([0.8 + (0.2 - 0.8) * shape(i / 3) for i in range(4)])
    assert [c.seed for c in recorder.calls] == [5, 6, 7, 8]
    assert [c.inpaint.fill for c in recorder.calls if c.inpaint] == [2, 1, 1, 1]
    assert len(result.images) == 5
    assert result.images[0].size == (256, 64)
    parsed = infotext.parse(result.infotexts[0])
    assert (parsed["Final denoising strength"], parsed["Denoising curve"]) == ("0.2", curve)


def test_loopback_with_several_batches_keeps_each_batch_last_image() -> None:
    params = GenerationParams("p", width=64, height=64, init_image=_noise_image(64, 64), seed=5, n_iter=3)
    recorder = Recorder()
    result = run_script(_scripted(params, "loopback", [2, 0.5]), recorder.context())
    assert [c.seed for c in recorder.calls] == [5, 6, 7, 8, 9, 10]
    assert len(result.images) == 4  # grid + the last image of each of the 3 batches
    with pytest.raises(FieldError) as e:
        _scripted(params, "loopback", [2, 0.5, "Linear", "CLIP"])
    assert e.value.field == "script_args.3"


# -- over HTTP -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root = build_root(make_tiny, tmp_path_factory.mktemp("scripts"))
    with serve(root) as served, httpx.Client(base_url=served.base, timeout=300) as c:
        yield c


def test_a1111_sd_upscale_payload(client: httpx.Client) -> None:
    """A1111's test_img2img_sd_upscale_performed, with its checks made strict."""
    payload = {**IMG2IMG_BASE, "init_images": [init_image_b64()], "seed": 3,
               "script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]}  # fmt: skip
    body = generate(client, "img2img", payload)
    assert len(body["images"]) == 1
    image = decode(body["images"][0])
    assert image.size == (128, 128)
    parsed = infotext.parse(image.info["parameters"])
    assert (parsed["SD upscale overlap"], parsed["SD upscale upscaler"], parsed["Size-1"]) == (
        "8",
        "Lanczos",
        "64",
    )
    assert parsed["Seed"] == "3"
    plain = generate(client, "img2img", {**payload, "script_name": None, "script_args": []})
    assert decode(plain["images"][0]).size == (64, 64)


def test_scripts_listing_and_info(client: httpx.Client) -> None:
    listed = client.get("/sdapi/v1/scripts").json()
    assert listed == {  # A1111's order: its scripts/ folder by file name
        "txt2img": ["prompts from file or textbox", "x/y/z plot"],
        "img2img": [
            "loopback",
            "outpainting mk2",
            "poor man's outpainting",
            "prompts from file or textbox",
            "sd upscale",
            "x/y/z plot",
        ],
    }
    info = {(s["name"], s["is_img2img"]): s for s in client.get("/sdapi/v1/script-info").json()}
    upscale = info[("sd upscale", True)]
    assert [a["label"] for a in upscale["args"]][1:] == ["Tile overlap", "Upscaler", "Scale Factor"]
    assert upscale["args"][2]["choices"][:3] == list(UPSCALERS)
    assert ("loopback", False) not in info


def test_prompts_from_file_over_http(client: httpx.Client) -> None:
    text = "a house\n--prompt a tree --steps 2"
    payload = {**TXT2IMG_BASE, "seed": 42, "script_name": "Prompts from file or textbox",
               "script_args": [True, False, "start", text]}  # fmt: skip
    body = generate(client, "txt2img", payload)
    texts = body["info"]["infotexts"]
    assert len(body["images"]) == len(texts) == 2
    first, second = (infotext.parse(t) for t in texts)
    assert (first["Prompt"], first["Seed"], first["Steps"]) == ("a house example prompt", "42", "3")
    assert (second["Prompt"], second["Seed"], second["Steps"]) == ("a tree example prompt", "43", "2")
    assert json.loads(json.dumps(body["parameters"]))["script_args"] == payload["script_args"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"script_name": "nope"}, "script_name"),
        ({"script_name": "loopback"}, "script_name"),  # img2img only
        (
            {"script_name": "prompts from file or textbox", "script_args": [1, False, "start", "x"]},
            "script_args.0",
        ),
    ],
)
def test_bad_scripts_are_422(client: httpx.Client, change: dict[str, Any], field: str) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**TXT2IMG_BASE, **change})
    assert response.status_code == 422, response.text
    assert ".".join(str(p) for p in response.json()["detail"][0]["loc"][1:]) == field


def test_loopback_over_http(client: httpx.Client) -> None:
    payload = {**IMG2IMG_BASE, "init_images": [init_image_b64()], "seed": 9, "script_name": "Loopback",
               "script_args": [3, 0.5, "Linear", "None"]}  # fmt: skip
    body = generate(client, "img2img", payload)
    images = [decode(b) for b in body["images"]]
    assert [im.size for im in images] == [(192, 64), (64, 64), (64, 64), (64, 64)]
    assert infotext.parse(body["info"]["infotexts"][1])["Denoising curve"] == "Linear"


# -- X/Y/Z plot -----------------------------------------------------------------------------------------
def _xyz(
    x: tuple[Any, str], y: tuple[Any, str] = (0, ""), z: tuple[Any, str] = (0, ""), **flags: Any
) -> list[Any]:
    """X/Y/Z plot script_args (A1111 v1.10 order) with text values (csv mode) and the given flags."""
    names = ("draw_legend", "lone", "sub_grids", "keep_seeds", "vary_x", "vary_y", "vary_z")
    defaults = {"draw_legend": True, "lone": False, "sub_grids": False, "keep_seeds": False,
                "vary_x": False, "vary_y": False, "vary_z": False}  # fmt: skip
    defaults.update(flags)
    return [x[0], x[1], [], y[0], y[1], [], z[0], z[1], [], *(defaults[n] for n in names), 0, True]


@pytest.mark.parametrize(
    ("axis", "text", "expected"),
    [
        (4, "1-5", [1, 2, 3, 4, 5]),  # Steps
        (4, "1-10 (+3)", [1, 4, 7, 10]),
        (4, "1-10 [5]", [1, 3, 5, 7, 10]),  # int(np.linspace)
        (4, "10-1 (-4), 20", [10, 6, 20]),  # range(10, 1 + 1, -4)
        (6, "0.5-1.5 (+0.5)", [0.5, 1.0, 1.5]),  # CFG Scale: np.arange(start, end + step, step)
        (6, "1-2 [3]", [1.0, 1.5, 2.0]),
        (6, "7, 9.5", [7.0, 9.5]),
        (7, 'cat,"dog, big"', ["cat", "dog, big"]),  # Prompt S/R: CSV quoting
    ],
)
def test_xyz_axis_values_follow_a1111_ranges(axis: int, text: str, expected: list[Any]) -> None:
    params = GenerationParams("a cat", width=64, height=64, seed=1)
    scripted = _scripted(params, "x/y/z plot", _xyz((axis, text)))
    assert scripted.script is not None
    assert json.loads(scripted.script.args)[18]["axes"][0] == pytest.approx(expected)


def test_xyz_cells_order_seeds_and_grids() -> None:
    params = GenerationParams("p", width=64, height=64, seed=50)
    recorder = Recorder()
    args = _xyz((4, "1-3"), (6, "5, 7"), lone=True, sub_grids=True, vary_x=True, vary_y=True)
    result = run_script(_scripted(params, "X/Y/Z plot", args), recorder.context())
    # equal costs: z outermost, then y, x innermost (A1111's default loop order)
    assert [(c.steps, c.cfg_scale) for c in recorder.calls] == [(s, g) for g in (5.0, 7.0) for s in (1, 2, 3)]
    assert [c.seed for c in recorder.calls] == [50 + ix + iy * 3 for iy in range(2) for ix in range(3)]
    assert len(result.images) == 1 + 1 + 6  # main grid, the one sub-grid, every cell
    grid = result.images[0]
    assert grid.width == 3 * 64 + 64 * 3 // 4  # row labels take ¾ of a cell width on the left
    assert grid.height > 2 * 64  # column labels above
    main = infotext.parse(result.infotexts[0])
    assert (main["Script"], main["X Type"], main["X Values"], main["Y Type"], main["Y Values"]) == (
        "X/Y/Z plot", "Steps", "1-3", "CFG Scale", "5, 7",
    )  # fmt: skip
    assert "Z Type" not in main
    plain = run_script(
        _scripted(params, "X/Y/Z plot", _xyz((4, "1-3"), draw_legend=False)), Recorder().context()
    )
    assert len(plain.images) == 1
    assert plain.images[0].size == (3 * 64, 64)


def test_xyz_checkpoint_axis_runs_outermost_with_its_model() -> None:
    params = GenerationParams("p", width=64, height=64, seed=7)
    recorder = Recorder()
    args = _xyz((1, "1, 2"), (11, "tiny, other"))  # Seed × Checkpoint name
    run_script(_scripted(params, "x/y/z plot", args), recorder.context())
    assert recorder.models == [("tiny", None), ("tiny", None), ("other", None), ("other", None)]
    assert [c.seed for c in recorder.calls] == [1, 2, 1, 2]
    with pytest.raises(FieldError):
        _scripted(params, "x/y/z plot", _xyz((11, "missing")))


def test_xyz_random_seed_values_are_fixed_and_recorded() -> None:
    params = GenerationParams("p", width=64, height=64, seed=7)
    recorder = Recorder()
    result = run_script(_scripted(params, "x/y/z plot", _xyz((1, "-1, 5"))), recorder.context())
    drawn = recorder.calls[0].seed
    assert drawn != -1
    assert [c.seed for c in recorder.calls] == [drawn, 5]
    assert infotext.parse(result.infotexts[0])["Fixed X Values"] == f"{drawn}, 5"


def test_xyz_prompt_axes() -> None:
    params = GenerationParams("a cat and a hat", negative_prompt="no cat", width=64, height=64, seed=1)
    recorder = Recorder()
    run_script(_scripted(params, "x/y/z plot", _xyz((7, "cat, dog"))), recorder.context())  # Prompt S/R
    assert [(c.prompt, c.negative_prompt) for c in recorder.calls] == [
        ("a cat and a hat", "no cat"), ("a dog and a hat", "no dog"),
    ]  # fmt: skip
    recorder = Recorder()
    run_script(_scripted(params, "x/y/z plot", _xyz((8, "cat, hat"))), recorder.context())  # Prompt order
    assert [c.prompt for c in recorder.calls] == ["a cat and a hat", "a hat and a cat"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (_xyz((31, "a")), "script_args.0"),  # Styles: not here
        (_xyz((4, "abc")), "script_args.1"),
        (_xyz((7, "zebra, dog")), "script_args.1"),  # Prompt S/R must find its first value
        (_xyz((9, "Euler, Nope")), "script_args.1"),  # Sampler
        (_xyz((99, "1")), "script_args.0"),
        (_xyz((4, "1-1000000000")), "script_args.1"),  # refused before the values are built
        (_xyz((6, "0-1000000 (+0.001)")), "script_args.1"),
        (_xyz((4, "1-2 [100000000]")), "script_args.1"),
    ],
)
def test_xyz_bad_axes_are_refused(args: list[Any], field: str) -> None:
    with pytest.raises(FieldError) as e:
        _scripted(GenerationParams("a cat", width=64, height=64), "x/y/z plot", args)
    assert e.value.field == field


def test_xyz_plot_over_http(client: httpx.Client) -> None:
    payload = {**TXT2IMG_BASE, "seed": 5, "script_name": "x/y/z plot",
               "script_args": _xyz((4, "1, 2"), (6, "3, 7"), lone=True)}  # fmt: skip
    body = generate(client, "txt2img", payload)
    images = [decode(b) for b in body["images"]]
    assert len(images) == 1 + 4
    assert images[0].width == 2 * 64 + 48
    parsed = [infotext.parse(t) for t in body["info"]["infotexts"]]
    assert (parsed[0]["X Type"], parsed[0]["Y Values"]) == ("Steps", "3, 7")
    assert [(p["Steps"], p["CFG scale"]) for p in parsed[1:]] == [
        ("1", "3.0"),
        ("2", "3.0"),
        ("1", "7.0"),
        ("2", "7.0"),
    ]


# -- Poor man's outpainting -----------------------------------------------------------------------------
def test_poor_mans_outpainting_canvas_masks_and_tiles() -> None:
    init = _noise_image(64, 48, seed=3)
    params = GenerationParams("p", width=64, height=64, init_image=init, seed=20)
    recorder = Recorder()
    result = run_script(_scripted(params, "Poor man's outpainting", [32, 4, "original", ["left", "down"]]),
                        recorder.context())  # fmt: skip
    # 64+32 → 128 wide (all the growth on the left), 48+32 → 128 high (all below): the picture at (64, 0)
    assert result.images[0].size == (128, 128)
    tiles = recorder.calls
    assert len(tiles) == 9  # 3×3 tiles of 64 overlapping by 32: each reaches the new border (48 < 64 high)
    assert [t.seed for t in tiles] == list(range(20, 29))
    first = tiles[0]
    assert first.inpaint is not None
    assert (first.inpaint.blur, first.inpaint.fill, first.inpaint.only_masked) == (8, 1, False)
    mask = np.asarray(first.inpaint.mask)  # tile (0, 0): everything is new → white
    assert (mask == 255).all()
    kept = np.asarray(result.images[0])[0:40, 72:128]  # inside the old picture, away from the blend
    assert np.array_equal(kept, np.asarray(init)[0:40, 8:64])


def test_poor_mans_outpainting_keeps_tiles_inside_the_old_picture() -> None:
    params = GenerationParams("p", width=64, height=64, init_image=_noise_image(128, 128, seed=4), seed=1)
    recorder = Recorder()
    scripted = _scripted(params, "poor man's outpainting", [32, 4, 0, ["right"]])
    result = run_script(scripted, recorder.context())
    assert result.images[0].size == (192, 128)  # 128 + 32 → the next multiple of 64
    # tiles at x 0, 32, 64, 96, 128 and y 0, 32, 64: the nine with x + 64 ≤ 128 lie inside the old picture
    assert len(recorder.calls) == 6
    assert all(c.init_image is not None and c.init_image.size == (64, 64) for c in recorder.calls)


def test_poor_mans_outpainting_over_http(client: httpx.Client) -> None:
    args = [32, 2, 1, ["left", "up"]]
    payload = {**IMG2IMG_BASE, "init_images": [init_image_b64()], "seed": 4, "width": 64, "height": 64,
               "script_name": "Poor man's outpainting", "script_args": args}  # fmt: skip
    body = generate(client, "img2img", payload)
    assert len(body["images"]) == 1
    image = decode(body["images"][0])
    assert image.size == (128, 128)
    assert infotext.parse(image.info["parameters"])["Mask blur"] == "4"  # 2 × the script's blur


def test_xyz_dropdown_axes_read_the_list_unless_text_mode() -> None:
    params = GenerationParams("p", width=64, height=64, seed=1)
    args = _xyz((9, "Euler"))  # Sampler, text mode
    args[2], args[17] = ["DDIM", "Euler a"], False  # dropdown mode: the list wins over the text
    recorder = Recorder()
    result = run_script(_scripted(params, "x/y/z plot", args), recorder.context())
    assert [c.sampler for c in recorder.calls] == ["DDIM", "Euler a"]
    assert infotext.parse(result.infotexts[0])["X Values"] == "DDIM,Euler a"
    args[2] = []  # an empty list: the text (A1111 would have no values)
    recorder = Recorder()
    run_script(_scripted(params, "x/y/z plot", args), recorder.context())
    assert [c.sampler for c in recorder.calls] == ["Euler"]


# -- Outpainting mk2 ------------------------------------------------------------------------------------
def test_matched_noise_fills_only_the_mask_with_the_pictures_colours() -> None:
    from latentstudio.pipeline.scripts.outpainting_mk2 import matched_noise

    picture = np.asarray(_noise_image(96, 64, seed=7), dtype=np.float64) / 255.0
    picture[:, :, 0] = np.linspace(0.2, 0.9, 96)[None, :]  # red: a ramp; green, blue: noise
    mask = np.zeros_like(picture)
    mask[:, 64:] = 1.0  # the right third is new
    out = matched_noise(picture.copy(), mask, 1.0, 0.05)
    assert np.array_equal(out[:, :64], picture[:, :64])  # unmasked pixels untouched
    assert np.array_equal(out, matched_noise(picture.copy(), mask, 1.0, 0.05))  # deterministic (seed 0)
    filled, source = out[:, 64:].reshape(-1, 3), picture[:, :64].reshape(-1, 3)
    levels = np.linspace(0.05, 0.95, 10)
    for c in range(3):  # histogram-matched: the fill's quantiles are the picture's
        assert np.abs(np.quantile(filled[:, c], levels) - np.quantile(source[:, c], levels)).max() < 0.02
    assert np.std(filled[:, 0]) > 0.1  # noise, not a flat fill


def test_outpainting_mk2_passes_sizes_and_seeds() -> None:
    init = _noise_image(64, 64, seed=5)
    params = GenerationParams("p", width=96, height=96, init_image=init, seed=30, batch_size=2, n_iter=2)
    recorder = Recorder()
    scripted = _scripted(params, "outpainting mk2", ["", 32, 4, ["left", "down"], 1.0, 0.05])
    result = run_script(scripted, recorder.context())
    # 64 + 32 → 128: the left side grows by 64, then the bottom by 64; each pass inpaints the request's
    # width (height) at most at the new side, for each picture of the batch, at the request's seeds
    sizes = [c.init_image.size for c in recorder.calls if c.init_image is not None]
    assert sizes == ([(96, 64)] * 2 + [(128, 96)] * 2) * 2
    assert [c.seed for c in recorder.calls] == [30, 31] * 4
    first = recorder.calls[0]
    assert first.inpaint is not None
    assert (first.inpaint.blur, first.inpaint.fill, first.inpaint.only_masked) == (16, 1, False)
    assert first.inpaint.latent_mask is not None
    assert len(result.images) == 1 + 4  # a grid, then every picture
    assert all(image.size == (128, 128) for image in result.images[1:])
    kept = np.asarray(result.images[1])[:40, 72:]  # the old picture, away from the blurred seam
    assert np.array_equal(kept, np.asarray(init)[:40, 8:])


def test_outpainting_mk2_over_http(client: httpx.Client) -> None:
    args = ["", 32, 4, ["right"], 1.0, 0.05]  # 64 + 32 → 128 wide: a 96-wide pass at the right edge
    payload = {**IMG2IMG_BASE, "init_images": [init_image_b64()], "seed": 4, "width": 96, "height": 64,
               "script_name": "Outpainting mk2", "script_args": args}  # fmt: skip
    body = generate(client, "img2img", payload)
    images = [decode(b) for b in body["images"]]
    assert [im.size for im in images] == [(128, 64)]
    assert infotext.parse(images[0].info["parameters"])["Mask blur"] == "16"


def test_outpainting_mk2_refuses_a_growth_the_pass_cannot_hold() -> None:
    params = GenerationParams("p", width=64, height=64, init_image=_noise_image(64, 64), seed=1)
    with pytest.raises(FieldError) as e:
        _scripted(params, "outpainting mk2", ["", 32, 4, ["down"], 1.0, 0.05])  # grows 64 in a 64 pass
    assert e.value.field == "script_args.1"


def test_prompts_from_file_tiling_lines() -> None:
    from latentstudio.pipeline.params import TilingMode

    base = GenerationParams("p", width=64, height=64, seed=3)
    recorder = Recorder()
    args = [False, False, "start", "--tiling true --prompt a\n--tiling false --prompt b\nc"]
    run_script(_scripted(base, "prompts from file or textbox", args), recorder.context())
    assert [c.tiling for c in recorder.calls] == [TilingMode.BOTH, TilingMode.NONE, TilingMode.NONE]


def test_poor_mans_canvas_rounds_an_axis_it_does_not_grow() -> None:
    from latentstudio.pipeline.scripts.poor_mans import outpaint_canvas

    canvas, mask, _, sides = outpaint_canvas(_noise_image(100, 40), 32, 4, ["down"])
    assert canvas.size == (128, 128)  # A1111: target_w = ceil(100 / 64) · 64 even without left/right
    assert sides == (0, 0, 0, 88)
    # A1111 keeps everything above the new bottom strip, the empty right strip too (its rectangle runs to the
    # canvas edge on a side that does not grow)
    assert np.asarray(mask)[:32, 100:].max() == 0  # down to 128 − 88 − 2·blur
    assert np.asarray(mask)[-40:].min() == 255
