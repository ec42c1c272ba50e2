"""The web UI in a real browser: Playwright drives Debian's headless Chromium (``/usr/bin/chromium``,
installed by ``scripts/test``; Playwright's own browser download is never used) against the real server
with a tiny checkpoint. Screenshots of every tab and the measured click → first progress time are written to
``tests/artifacts/ui/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import load_file, save_file

from latentstudio.config import Settings
from latentstudio.jobs import JobKind, JobStatus
from latentstudio.models.families import Family
from tests.conftest import MakeTiny
from tests.esrgan_files import random_esrgan_state
from tests.serving import Served, models_root, serve, wait_until

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"
# As root Chromium needs --no-sandbox; the rest keep it off the (closed) network.
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip
SMALL = {"width": 64, "height": 64}
WIDE = Path("Stable-diffusion") / "wide.safetensors"
SIZES = [f"{tab}_{side}" for tab in ("txt2img", "img2img") for side in ("width", "height")]
# The tool buttons, by tab: elem_id → accessible name. Their icons must draw without an emoji font.
TOOL_BUTTONS = {
    "txt2img": {"refresh_models": "Refresh", "txt2img_random_seed": "Random seed",
                "txt2img_reuse_seed": "Reuse seed"},
    "img2img": {"img2img_random_seed": "Random seed", "img2img_reuse_seed": "Reuse seed"},
    "history": {"history_refresh": "Refresh", "history_delete": "Delete job"},
}  # fmt: skip
COMPACT = {"refresh_models", "txt2img_random_seed", "txt2img_reuse_seed", "img2img_random_seed",
           "img2img_reuse_seed"}  # fmt: skip
# What the icon check hides to see what the icon itself draws: an <img>, an <svg> or a ::before / ::after.
HIDE_ICONS = """
.ls-icons-hidden img, .ls-icons-hidden svg, .ls-icons-hidden::before, .ls-icons-hidden::after,
.ls-icons-hidden *::before, .ls-icons-hidden *::after {visibility: hidden !important;}
"""
ICON_BOXES = """button => {
  const boxes = [];
  for (const icon of button.querySelectorAll('img, svg')) {
    const r = icon.getBoundingClientRect();
    boxes.push({kind: icon.tagName.toLowerCase(), width: r.width, height: r.height,
                loaded: icon.tagName === 'IMG' ? icon.complete && icon.naturalWidth > 0 : true});
  }
  for (const pseudo of ['::before', '::after']) {
    const style = getComputedStyle(button, pseudo);
    if (style.content === 'none' || style.display === 'none') continue;
    boxes.push({kind: pseudo, width: parseFloat(style.width) || 0, height: parseFloat(style.height) || 0,
                loaded: [style.maskImage, style.webkitMaskImage, style.backgroundImage]
                  .some(v => v && v !== 'none' && v.startsWith('url("data:'))});
  }
  return boxes;
}"""

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/test installs it)"),
    pytest.mark.timeout(600),
]
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def served(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ui")
    models = models_root(make_tiny(Family.SD1).path, root)
    # the same tiny model declared at 96 latents: a 768 px checkpoint (sorted after "tiny", the default)
    wide = {"latentstudio.architecture": json.dumps({"unet": {"sample_size": 96}})}
    save_file(load_file(models / "Stable-diffusion" / "tiny.safetensors"), models / WIDE, metadata=wide)
    (models / "Lora").mkdir()
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}
    save_file(lora, models / "Lora" / "detail-tweaker.safetensors")  # listed as a card
    for folder in ("ESRGAN", "GFPGAN"):
        (models / folder).mkdir()
    save_file(random_esrgan_state(scale=2), models / "ESRGAN" / "2x-Tiny.safetensors")  # a model upscaler
    # weights in GFPGAN/ show its slider; an ESRGAN file there fails when the job loads it
    save_file(random_esrgan_state(), models / "GFPGAN" / "GFPGANv1.4.safetensors")
    settings = Settings(models_dir=models, data_dir=root / "data", device="cpu")
    with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    with _page(browser, served.base) as page:
        yield page


@contextlib.contextmanager
def _page(browser: Any, base: str, checkpoint: str = "tiny") -> Iterator[Any]:
    """A new browser page with the UI open (its catalog loaded); it must not reach outside ``base``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    outside: list[str] = []  # the UI must not reach the network (fonts, analytics, CDNs)
    page.on(
        "request",
        lambda r: None if r.url.startswith((base, "data:", "blob:")) else outside.append(r.url),
    )
    _open(page, base, checkpoint)
    yield page
    context.close()
    assert outside == []


def _open(page: Any, base: str, checkpoint: str = "tiny") -> None:
    page.goto(base + "/")
    page.wait_for_selector("#txt2img_prompt textarea")
    _wait_checkpoint(page, checkpoint)  # the catalog loaded


def _wait_checkpoint(page: Any, name: str) -> None:
    page.wait_for_function(
        f"document.querySelector('#setting_sd_model_checkpoint input').value.includes('{name}')"
    )


def _pick_checkpoint(page: Any, name: str) -> None:
    """Choose a checkpoint in the dropdown on top, as a person does (open the list, click the entry)."""
    page.locator("#setting_sd_model_checkpoint input").click()
    page.locator("#setting_sd_model_checkpoint [role=option]", has_text=name).click()
    _wait_checkpoint(page, name)


def _wait_sizes(page: Any, **sizes: int) -> None:
    """Wait until the Width / Height sliders (``txt2img_width=512``…) show these values; each tab is
    opened to look (Gradio renders a tab's controls once it is shown), then txt2img again."""
    for tab in dict.fromkeys(elem.split("_")[0] for elem in sizes):
        page.click(f"#tab_{tab}-button")
        expected = {elem: str(value) for elem, value in sizes.items() if elem.startswith(tab)}
        read = f"""() => Object.fromEntries({list(expected)}.map(
            e => [e, document.querySelector('#' + e + ' input[type=number]')?.value]))"""
        want = json.dumps(expected, separators=(",", ":"))
        try:
            page.wait_for_function(f"JSON.stringify(({read})()) === '{want}'", timeout=30_000)
        except sync_api.TimeoutError:
            raise AssertionError(f"sizes {page.evaluate(read)}, expected {expected}") from None
    page.click("#tab_txt2img-button")


@pytest.fixture
def restore_checkpoint(served: Served) -> Iterator[None]:
    """Put the tiny checkpoint back as the current one after a test that switches it."""
    yield
    with httpx.Client(base_url=served.base, timeout=30) as client:
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}).raise_for_status()


def _number(page: Any, elem: str, value: float) -> None:
    field = page.locator(f"#{elem} input[type=number]")
    field.fill(str(value))
    field.press("Enter")


def _seed(page: Any, tab: str, value: int) -> None:
    page.locator(f"#{tab}_seed input").fill(str(value))
    page.locator(f"#{tab}_seed input").press("Enter")


def _status(page: Any, tab: str) -> str:
    return str(page.get_attribute(f"#{tab}_progress .ls-progress", "data-status"))


def _wait_status(page: Any, tab: str, *statuses: str, timeout: float = 120_000) -> None:
    selector = ", ".join(f"#{tab}_progress .ls-progress[data-status={s}]" for s in statuses)
    page.wait_for_selector(selector, timeout=timeout)


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _latest_job(served: Served) -> Any:
    return served.jobs.list(limit=1)[0]


def test_txt2img_generates_and_shows_the_image_and_its_infotext(page: Any, served: Served) -> None:
    page.fill("#txt2img_prompt textarea", "a red circle, (big:1.2)")
    page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText.trim() === '5/75'")
    for name, value in {**SMALL, "steps": 4}.items():
        _number(page, f"txt2img_{name}", value)
    _seed(page, "txt2img", 1234)
    time.sleep(0.3)  # let the last input event land before the click reads the values
    started = time.perf_counter()
    page.click("#txt2img_generate")
    _wait_status(page, "txt2img", "queued", "running", "done")
    first_progress = time.perf_counter() - started
    _wait_status(page, "txt2img", "done")
    page.wait_for_selector("#txt2img_gallery img")
    info = page.input_value("#txt2img_info textarea")
    assert info.startswith("a red circle, (big:1.2)\nSteps: 4, Sampler: DPM++ 2M")
    assert "Seed: 1234, Size: 64x64" in info
    record = _latest_job(served)
    assert record.spec.source == "ui"
    assert record.status is JobStatus.DONE
    assert record.infotexts == [info]  # what the page shows is what the PNG carries
    png = Image.open(served.jobs.image_path(record.images[0].id))
    assert png.size == (64, 64)
    assert png.info["parameters"] == info
    _shot(page, "txt2img")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "first_progress.json").write_text(json.dumps({"click_to_first_progress_s": first_progress}))
    print(f"click → first progress update: {first_progress:.3f} s (goal ≤ 1 s with the tiny model)")
    # ♻ takes the seed of the shown image back into the seed box; 🎲 makes it random again
    _seed(page, "txt2img", -1)
    page.click("#txt2img_reuse_seed")
    page.wait_for_function("document.querySelector('#txt2img_seed input').value === '1234'")
    page.click("#txt2img_random_seed")
    page.wait_for_function("document.querySelector('#txt2img_seed input').value === '-1'")


def test_a_refused_value_is_shown_next_to_the_button(page: Any, served: Served) -> None:
    before = served.jobs.count()
    page.fill("#txt2img_prompt textarea", "(x:1.2.3)")
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_error:visible")
    text = page.inner_text("#txt2img_error")
    assert text.startswith("prompt:")
    assert "1.2.3" in text
    assert "Traceback" not in page.content()
    assert served.jobs.count() == before  # nothing queued


def test_interrupt_a_long_job_and_queue_positions_per_tab(browser: Any, served: Served) -> None:
    pages = []
    for _ in range(2):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        _open(tab, served.base)
        tab.fill("#txt2img_prompt textarea", "a long job")
        for name, value in {**SMALL, "steps": 150, "batch_count": 20}.items():
            _number(tab, f"txt2img_{name}", value)
        pages.append(tab)
    first, second = pages
    time.sleep(0.3)
    first.click("#txt2img_generate")
    _wait_status(first, "txt2img", "running")
    second.click("#txt2img_generate")
    _wait_status(second, "txt2img", "queued")  # the second tab sees its own job waiting
    assert "Queued (next)" in second.inner_text("#txt2img_progress")
    first.wait_for_function(
        "Number(document.querySelector('#txt2img_progress .ls-progress').dataset.step) >= 2"
    )
    first.wait_for_selector("#txt2img_preview img")  # the live preview of the running job
    assert _status(first, "txt2img") == "running"
    first.click("#txt2img_interrupt")
    _wait_status(first, "txt2img", "done")
    assert "(interrupted)" in first.inner_text("#txt2img_progress")
    first.wait_for_selector("#txt2img_gallery img")
    _wait_status(second, "txt2img", "running")  # the queue moves on to the other tab's job
    second.click("#txt2img_interrupt")
    _wait_status(second, "txt2img", "done")
    records = served.jobs.list(limit=2)
    assert all(r.interrupted and r.step < r.total for r in records)
    for tab in pages:
        tab.context.close()


@pytest.mark.usefixtures("restore_checkpoint")
def test_png_info_send_to_txt2img_restores_the_parameters(page: Any, served: Served, tmp_path: Path) -> None:
    payload = {"prompt": "pasted prompt", "negative_prompt": "blurry", "seed": 98765, "sampler": "Euler a",
               "scheduler": "Karras", "steps": 3, "cfg_scale": 5.5, **SMALL}  # fmt: skip
    with httpx.Client(base_url=served.base, timeout=120) as client:
        job_id = client.post("/api/v1/jobs", json=payload).json()["id"]
        done = client.get(f"/api/v1/jobs/{job_id}", params={"wait": 60}).json()
    assert done["status"] == "done", done
    png = tmp_path / "pasted.png"
    shutil.copyfile(served.jobs.image_path(done["images"][0]["id"]), png)
    page.click("#tab_pnginfo-button")
    page.locator("#pnginfo_file input[type=file]").set_input_files(str(png))
    page.wait_for_function("document.querySelector('#pnginfo_parameters textarea').value.includes('98765')")
    _shot(page, "pnginfo")
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_selector("#tab_txt2img-button[aria-selected=true]")
    page.wait_for_function("document.querySelector('#txt2img_seed input').value === '98765'")
    assert page.input_value("#txt2img_prompt textarea") == "pasted prompt"
    assert page.input_value("#txt2img_neg_prompt textarea") == "blurry"
    assert page.input_value("#txt2img_sampler input") == "Euler a"
    assert page.input_value("#txt2img_scheduler input") == "Karras"
    assert page.input_value("#txt2img_steps input[type=number]") == "3"
    assert page.input_value("#txt2img_cfg_scale input[type=number]") == "5.5"
    assert page.input_value("#txt2img_width input[type=number]") == "64"
    _pick_checkpoint(page, "wide")  # a pasted size is the user's: kept; img2img's follows the checkpoint
    _wait_sizes(page, txt2img_width=64, txt2img_height=64, img2img_width=768, img2img_height=768)


def _upload_to_editor(page: Any, path: Path) -> Any:
    """Open img2img's Inpaint tab and upload ``path`` into the editor; its canvas."""
    page.click("#tab_img2img-button")
    page.click("#img2img_inpaint_tab-button")
    editor = page.locator("#img2img_inpaint_editor")
    for _attempt in range(3):  # the editor may not have mounted its upload handler yet: choose again
        with page.expect_file_chooser() as chooser:
            editor.get_by_text("Upload an image").click()
        chooser.value.set_files(str(path))
        with contextlib.suppress(sync_api.TimeoutError):
            editor.get_by_text("Upload an image").wait_for(state="hidden", timeout=5000)
            break
    assert not editor.get_by_text("Upload an image").is_visible()
    canvas = editor.locator("canvas").first
    canvas.wait_for()
    return canvas


def _draw_and_generate(page: Any, canvas: Any) -> None:
    """Paint a horizontal stroke across the middle of the editor's canvas and press Generate; the job
    started (its progress shows)."""
    # In headless Chromium the editor now and then drops a stroke drawn while it is still laying the image
    # out (the page then says what is missing); draw again then, as a person would.
    for _attempt in range(4):
        time.sleep(1.5)
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x - 40, y)
        page.mouse.down()
        for i in range(20):
            page.mouse.move(x - 40 + 4 * i, y, steps=2)
        page.mouse.up()
        time.sleep(0.5)
        page.click("#img2img_generate")
        time.sleep(1.0)  # a refusal answers at once; a job shows its progress
        if _status(page, "img2img") != "idle":
            return
        assert "drop an image" in page.inner_text("#img2img_error") or "draw over" in page.inner_text(
            "#img2img_error"
        )
    raise AssertionError("the drawn mask never reached the server")


def _kept_outside_the_mask(served: Served, record: Any, init_path: Path) -> tuple[Any, Any]:
    """(mask, changed) of a finished inpainting job: every pixel outside its mask is the init pixel."""
    mask = np.asarray(record.spec.params.inpaint.mask.convert("L")) > 0
    assert 0 < mask.sum() < mask.size  # the stroke, not the whole picture
    init = np.asarray(Image.open(init_path).convert("RGB")).astype(int)
    out = np.asarray(Image.open(served.jobs.image_path(record.images[0].id)).convert("RGB")).astype(int)
    changed = np.abs(out - init).max(axis=-1) > 0
    assert not changed[~mask].any()  # every pixel outside the drawn mask is the init pixel
    return mask, changed


def test_inpaint_with_a_drawn_mask_changes_only_the_masked_region(
    page: Any, served: Served, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    init_path = tmp_path / "init.png"
    Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8)).save(init_path)
    canvas = _upload_to_editor(page, init_path)
    page.fill("#img2img_prompt textarea", "a blue square")
    fields = {"width": 128, "height": 128, "steps": 3, "mask_blur": 0, "denoising_strength": 1}
    for name, value in fields.items():
        _number(page, f"img2img_{name}", value)
    _draw_and_generate(page, canvas)
    _wait_status(page, "img2img", "done")
    _shot(page, "img2img_inpaint")
    assert not page.locator("#img2img_error").is_visible(), page.inner_text("#img2img_error")
    record = _latest_job(served)
    assert record.spec.kind == "img2img"
    assert record.spec.source == "ui"
    mask, changed = _kept_outside_the_mask(served, record, init_path)
    assert mask.sum() < mask.size // 2
    assert changed[mask].mean() > 0.5
    _seed(page, "img2img", 7)  # Generate again with the same drawing: the editor's image and mask are kept
    time.sleep(0.3)
    page.click("#img2img_generate")
    page.wait_for_function(
        "document.querySelector('#img2img_info textarea').value.includes('Seed: 7,')"
        " || document.querySelector('#img2img_error')?.offsetParent != null"
    )
    assert not page.locator("#img2img_error").is_visible(), page.inner_text("#img2img_error")
    again = _latest_job(served)
    assert again.id != record.id
    assert np.array_equal(np.asarray(again.spec.params.inpaint.mask.convert("L")) > 0, mask)


def test_inpaint_only_masked_with_fill_and_latent_noise(page: Any, served: Served, tmp_path: Path) -> None:
    """Inpaint area "Only masked" with masked content "fill" (an UnboundLocalError once), then "latent
    noise", from a drawn mask: the job is done, the pixels away from the mask are the init image's."""
    rng = np.random.default_rng(1)
    init_path = tmp_path / "init64.png"
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(init_path)
    canvas = _upload_to_editor(page, init_path)
    page.fill("#img2img_prompt textarea", "a green square")
    for name, value in {**SMALL, "steps": 2, "mask_blur": 0, "inpaint_full_res_padding": 4}.items():
        _number(page, f"img2img_{name}", value)
    page.locator("#img2img_inpaint_full_res").get_by_label("Only masked", exact=True).check()
    page.locator("#img2img_inpainting_fill").get_by_label("fill", exact=True).check()
    _draw_and_generate(page, canvas)
    _wait_status(page, "img2img", "done", "failed")
    _shot(page, "img2img_inpaint_only_masked")
    assert not page.locator("#img2img_error").is_visible(), page.inner_text("#img2img_error")
    record = _latest_job(served)
    assert record.status is JobStatus.DONE, record.error
    assert (record.spec.params.inpaint.only_masked, record.spec.params.inpaint.fill) == (True, 0)
    mask, _ = _kept_outside_the_mask(served, record, init_path)
    infotext = record.images[0].infotext
    assert "Inpaint area: Only masked" in infotext
    assert "Masked content: fill," in f"{infotext},"
    assert "Masked content: fill" in page.input_value("#img2img_info textarea")

    page.locator("#img2img_inpainting_fill").get_by_label("latent noise", exact=True).check()
    time.sleep(0.3)
    page.click("#img2img_generate")  # the same drawing: the editor's image and mask are kept
    page.wait_for_function(
        "document.querySelector('#img2img_info textarea').value.includes('Masked content: latent noise')"
        " || document.querySelector('#img2img_error')?.offsetParent != null"
    )
    assert not page.locator("#img2img_error").is_visible(), page.inner_text("#img2img_error")
    again = _latest_job(served)
    assert again.id != record.id
    assert again.status is JobStatus.DONE, again.error
    assert "Inpaint area: Only masked" in again.images[0].infotext
    again_mask, _ = _kept_outside_the_mask(served, again, init_path)
    assert np.array_equal(again_mask, mask)


def test_png_info_send_to_img2img_generates_from_the_uploaded_png(
    page: Any, served: Served, tmp_path: Path
) -> None:
    """An uploaded PNG goes PNG Info → img2img (through the server and back, as the upload check allows)
    and is the job's init image, pixel for pixel."""
    rng = np.random.default_rng(2)
    pixels = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    png = tmp_path / "dropped.png"
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters", "dropped prompt\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 31, Size: 64x64"
    )
    Image.fromarray(pixels).save(png, pnginfo=info)
    page.click("#tab_pnginfo-button")
    page.locator("#pnginfo_file input[type=file]").set_input_files(str(png))
    page.wait_for_function(
        "document.querySelector('#pnginfo_parameters textarea').value.includes('Seed: 31')"
    )
    page.click("#pnginfo_send_to_img2img")
    page.wait_for_selector("#tab_img2img-button[aria-selected=true]")
    page.wait_for_selector("#img2img_image img")
    page.fill("#img2img_prompt textarea", "from png info")
    for name, value in {**SMALL, "steps": 2}.items():
        _number(page, f"img2img_{name}", value)
    time.sleep(0.3)
    page.click("#img2img_generate")
    _wait_status(page, "img2img", "done", "failed")
    assert not page.locator("#img2img_error").is_visible(), page.inner_text("#img2img_error")
    record = _latest_job(served)
    assert record.status is JobStatus.DONE, record.error
    assert record.spec.params.inpaint is None
    assert np.array_equal(np.asarray(record.spec.params.init_image.convert("RGB")), pixels)


def test_every_tab_renders_and_history_lists_jobs(page: Any, served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=120) as client:
        job_id = client.post("/api/v1/jobs", json={"prompt": "history", "steps": 2, **SMALL}).json()["id"]
        client.get(f"/api/v1/jobs/{job_id}", params={"wait": 60})
    page.click("#tab_img2img-button")
    _shot(page, "img2img")
    page.click("#tab_extras-button")
    _shot(page, "extras")
    page.click("#tab_settings-button")
    page.wait_for_selector("#setting_CLIP_stop_at_last_layers")
    _shot(page, "settings")
    page.click("#tab_history-button")
    page.wait_for_selector("#history_gallery img")
    assert "jobs" in page.inner_text("#history_summary")
    _shot(page, "history")
    count = served.jobs.count()
    page.locator("#history_gallery img").first.click()
    page.wait_for_function("document.querySelector('#history_info textarea').value.includes('Steps:')")
    page.click("#history_delete")
    wait_until(lambda: served.jobs.count() == count - 1, 30)


def test_with_api_auth_the_ui_asks_for_credentials_and_refuses_wrong_ones(
    browser: Any, make_tiny: MakeTiny, tmp_path: Path
) -> None:
    models = models_root(make_tiny(Family.SD1).path, tmp_path)
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu", api_auth="alice:s3cr:et")
    with serve(settings) as running:
        for credentials in (None, {"username": "alice", "password": "wrong"}):
            context = browser.new_context(http_credentials=credentials)
            reply = context.request.get(running.base + "/")  # what the browser receives
            assert reply.status == 401
            assert reply.headers["www-authenticate"].startswith("Basic")  # the browser's login prompt
            try:  # Chromium shows the 401 page or gives up on the login: no UI either way
                response = context.new_page().goto(running.base + "/")
                assert response.status == 401
            except sync_api.Error as e:
                assert "ERR_INVALID_AUTH_CREDENTIALS" in str(e)  # noqa: PT017 - either outcome refuses the UI
            context.close()
        right = browser.new_context(http_credentials={"username": "alice", "password": "s3cr:et"})
        page = right.new_page()
        page.set_default_timeout(60_000)
        _open(page, running.base)
        assert page.locator("#refresh_models").evaluate(ICON_BOXES)[0]["loaded"]  # icons need no request
        page.fill("#txt2img_prompt textarea", "a cat")
        page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText.trim() === '2/75'")
        right.close()


def test_lora_card_inserts_its_tag_and_settings_persist(page: Any, served: Served) -> None:
    page.fill("#txt2img_prompt textarea", "a cat")
    page.click("#txt2img_networks")  # open the accordion
    page.locator("#txt2img_loras").get_by_text("detail-tweaker").click()
    page.wait_for_function(
        "document.querySelector('#txt2img_prompt textarea').value === 'a cat, <lora:detail-tweaker:1>'"
    )
    page.click("#tab_settings-button")
    field = page.locator("#setting_eta_noise_seed_delta input")
    field.fill("31337")
    field.press("Enter")
    time.sleep(0.3)
    page.click("#settings_apply")
    page.wait_for_function("document.querySelector('#settings_status').innerText.includes('saved')")
    stored = json.loads((served.jobs.settings.data_dir / "sdapi-options.json").read_text())
    assert stored["eta_noise_seed_delta"] == 31337  # the same store as /sdapi/v1/options
    with httpx.Client(base_url=served.base, timeout=30) as client:
        assert client.get("/sdapi/v1/options").json()["eta_noise_seed_delta"] == 31337
        field.fill("-5")  # out of range: refused, named, nothing stored
        field.press("Enter")
        time.sleep(0.3)
        page.click("#settings_apply")
        page.wait_for_function("document.querySelector('#settings_status').innerText.includes('eta_noise')")
        assert client.get("/sdapi/v1/options").json()["eta_noise_seed_delta"] == 31337
        client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 0})


def test_send_a_result_to_extras_and_upscale_it_with_a_model(page: Any, served: Served) -> None:
    page.fill("#txt2img_prompt textarea", "to extras")
    for name, value in {**SMALL, "steps": 2}.items():
        _number(page, f"txt2img_{name}", value)
    time.sleep(0.3)
    page.click("#txt2img_generate")
    _wait_status(page, "txt2img", "done")
    page.wait_for_selector("#txt2img_gallery img")
    page.click("#txt2img_send_to_extras")
    page.wait_for_selector("#tab_extras-button[aria-selected=true]")
    page.wait_for_selector("#extras_image img")
    page.locator("#extras_upscaler_1 input").click()  # open the list and pick the option
    page.locator("#extras_upscaler_1 [role=option]", has_text="2x-Tiny").click()
    page.wait_for_function("document.querySelector('#extras_upscaler_1 input').value === '2x-Tiny'")
    _number(page, "extras_upscaling_resize", 2)
    time.sleep(0.3)
    page.click("#extras_generate")
    try:
        page.wait_for_selector("#extras_result img")
    finally:
        _shot(page, "extras_result")
    page.wait_for_function(
        "document.querySelector('#extras_info').innerText.includes('Postprocess upscale by: 2')"
    )
    size = page.eval_on_selector("#extras_result img", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [128, 128]
    _shot(page, "extras_result")
    job = _latest_job(served)
    assert (job.spec.kind, job.spec.source, job.spec.options.upscaler_1) == (JobKind.EXTRAS, "ui", "2x-Tiny")
    # face restoration: offered because GFPGAN/ has weights (CodeFormer/ has none); the job loads the file
    assert page.locator("#extras_codeformer_visibility").is_hidden()
    _number(page, "extras_gfpgan_visibility", 0.5)
    time.sleep(0.3)
    page.click("#extras_generate")
    page.wait_for_selector("#extras_error:visible")
    assert "not GFPGAN" in page.inner_text("#extras_error")


def _needs_emoji_font(text: str) -> list[str]:
    """The characters of ``text`` that only an emoji / symbol font draws (pictographs, dingbats, arrows,
    variation selectors): on a machine without one they render as empty boxes."""
    return [
        c for c in text
        if unicodedata.category(c) == "So" or 0xFE00 <= ord(c) <= 0xFE0F or ord(c) >= 0x1F000
    ]  # fmt: skip


def _icon_pixels(page: Any, elem: str) -> int:
    """How many pixels of the button's screenshot change when its icon is hidden (what the icon draws)."""
    button = page.locator(f"#{elem}")
    page.mouse.move(0, 0)  # no hover state in either shot
    shown = np.asarray(Image.open(io.BytesIO(button.screenshot())).convert("RGB")).astype(int)
    button.evaluate("b => b.classList.add('ls-icons-hidden')")
    try:
        hidden = np.asarray(Image.open(io.BytesIO(button.screenshot())).convert("RGB")).astype(int)
    finally:
        button.evaluate("b => b.classList.remove('ls-icons-hidden')")
    assert shown.shape == hidden.shape, elem
    return int((np.abs(shown - hidden).max(axis=-1) > 32).sum())


def test_tool_buttons_draw_their_icons_without_an_emoji_font(page: Any) -> None:
    page.add_style_tag(content=HIDE_ICONS)
    for tab, buttons in TOOL_BUTTONS.items():
        page.click(f"#tab_{tab}-button")
        for elem, name in buttons.items():
            button = page.locator(f"#{elem}")
            button.wait_for()
            text = button.inner_text()
            assert _needs_emoji_font(text) == [], f"{elem}: {text!r} needs an emoji font"
            sync_api.expect(button).to_have_accessible_name(name)
            icons = button.evaluate(ICON_BOXES)
            assert icons, f"{elem}: no icon (img, svg or a data-URI ::before)"
            for icon in icons:
                assert min(icon["width"], icon["height"]) >= 12, (elem, icon)
                assert icon["loaded"], (elem, icon)  # an <img> loaded, a CSS icon is an inline data URI
            assert _icon_pixels(page, elem) >= 30, f"{elem}: the icon draws nothing"
            box = button.bounding_box()
            assert box["height"] <= 48, (elem, box)
            if elem in COMPACT:  # a square tool button beside its control, as A1111's
                assert box["width"] <= 48, (elem, box)
    _shot(page, "tool_buttons")


@pytest.mark.usefixtures("restore_checkpoint")
def test_width_and_height_follow_the_checkpoint_unless_the_user_set_them(page: Any, served: Served) -> None:
    _wait_sizes(page, **dict.fromkeys(SIZES, 512))  # the tiny SD1 checkpoint
    with httpx.Client(base_url=served.base, timeout=30) as client:  # chosen elsewhere (the API) …
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "wide"}).raise_for_status()
    page.click("#refresh_models")  # … and seen after a refresh
    _wait_checkpoint(page, "wide")
    _wait_sizes(page, **dict.fromkeys(SIZES, 768))
    _pick_checkpoint(page, "tiny")
    _wait_sizes(page, **dict.fromkeys(SIZES, 512))
    _number(page, "txt2img_width", 320)  # typed by the user: txt2img keeps its size from now on
    time.sleep(0.3)
    _pick_checkpoint(page, "wide")
    _wait_sizes(page, txt2img_width=320, txt2img_height=512, img2img_width=768, img2img_height=768)
    page.click("#tab_img2img-button")
    page.focus("#img2img_height input[type=range]")
    page.keyboard.press("ArrowLeft")  # dragged by the user (one step of 8)
    _wait_sizes(page, img2img_height=760)
    time.sleep(0.3)
    _pick_checkpoint(page, "tiny")
    stored = served.jobs.settings.data_dir / "sdapi-options.json"
    wait_until(lambda: json.loads(stored.read_text())["sd_model_checkpoint"] == "tiny.safetensors", 30)
    time.sleep(0.5)  # the answer to the switch has arrived: nothing of the user's changed
    _wait_sizes(page, txt2img_width=320, txt2img_height=512, img2img_width=768, img2img_height=760)
    _shot(page, "sizes_kept")


def test_with_no_models_the_built_in_model_sets_the_size_and_generates(browser: Any, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", device="cpu")
    with serve(settings) as running, _page(browser, running.base, "latentstudio-shapes") as page:
        _wait_sizes(page, **dict.fromkeys(SIZES, 64))  # the shapes model's 64×64, in both tabs
        page.fill("#txt2img_prompt textarea", "a red circle")
        _number(page, "txt2img_steps", 2)
        time.sleep(0.3)
        page.click("#txt2img_generate")
        _wait_status(page, "txt2img", "done")
        assert "Size: 64x64" in page.input_value("#txt2img_info textarea")
        record = _latest_job(running)
        assert record.status is JobStatus.DONE
        assert Image.open(running.jobs.image_path(record.images[0].id)).size == (64, 64)


def test_the_script_dropdown_runs_prompts_from_file(page: Any, served: Served) -> None:
    """A1111's Script dropdown: choosing a script shows its arguments; Generate runs it as one job."""
    page.fill("#txt2img_prompt textarea", "on white")
    for name, value in {**SMALL, "steps": 3}.items():
        _number(page, f"txt2img_{name}", value)
    _seed(page, "txt2img", 21)
    assert not page.locator("#txt2img_script_prompts_from_file_or_textbox_3").is_visible()
    page.locator("#txt2img_script_list input").click()
    page.locator("#txt2img_script_list [role=option]", has_text="Prompts from file or textbox").click()
    lines = "#txt2img_script_prompts_from_file_or_textbox_3 textarea"
    page.wait_for_selector(lines)
    page.fill(lines, 'a red circle\n--prompt "a blue square" --steps 2')
    time.sleep(0.3)  # let the last input event land before the click reads the values
    page.click("#txt2img_generate")
    _wait_status(page, "txt2img", "done")
    record = _latest_job(served)
    assert record.status is JobStatus.DONE
    assert record.spec.params.script is not None
    assert record.spec.params.script.name == "Prompts from file or textbox"
    texts = record.infotexts
    assert [t.splitlines()[0] for t in texts] == ["a red circle on white", "a blue square on white"]
    assert "Steps: 2," in texts[1]
    page.wait_for_selector("#txt2img_gallery img")
    _shot(page, "txt2img_script")
