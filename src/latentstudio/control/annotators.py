"""The sd-webui-controlnet preprocessors that need downloaded annotator weights (depth, pose, soft edges,
line art, segmentation, normals …): which file each needs and where the extension keeps it.

The extension downloads these on first use into
``extensions/sd-webui-controlnet/annotator/downloads/<folder>/``. This server never downloads anything, and
it does not run these networks yet: each is listed (``/controlnet/module_list`` ``unavailable``) with the
file it would need, and a request naming one is a 422 that names that file and folder instead of "unknown
module".
"""

from __future__ import annotations

from dataclasses import dataclass

DOWNLOADS = "extensions/sd-webui-controlnet/annotator/downloads"  # relative to the A1111 root


@dataclass(frozen=True)
class Annotator:
    """A weight-needing preprocessor: its module names and the files (``<folder>/<file>``) it loads."""

    modules: tuple[str, ...]
    files: tuple[str, ...]


ANNOTATORS = (
    Annotator(("depth_midas", "normal_midas"), ("midas/dpt_hybrid-midas-501f0c75.pt",)),
    Annotator(("depth_leres", "depth_leres++"), ("leres/res101.pth", "leres/latest_net_G.pth")),
    Annotator(("depth_zoe",), ("zoedepth/ZoeD_M12_N.pt",)),
    Annotator(("depth_anything",), ("depth_anything/depth_anything_vitl14.pth",)),
    Annotator(("depth_anything_v2",), ("depth_anything_v2/depth_anything_v2_vitl.safetensors",)),
    Annotator(("normal_bae",), ("normal_bae/scannet.pt",)),
    Annotator(
        ("openpose", "openpose_face", "openpose_faceonly", "openpose_full", "openpose_hand"),
        ("openpose/body_pose_model.pth", "openpose/hand_pose_model.pth", "openpose/facenet.pth"),
    ),
    Annotator(("dw_openpose_full",), ("openpose/dw-ll_ucoco_384.onnx", "openpose/yolox_l.onnx")),
    Annotator(("softedge_hed", "softedge_hedsafe", "scribble_hed"), ("hed/ControlNetHED.pth",)),
    Annotator(("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet"), ("pidinet/table5_pidinet.pth",)),
    Annotator(("softedge_teed",), ("TEED/7_model.pth",)),
    Annotator(("mlsd",), ("mlsd/mlsd_large_512_fp32.pth",)),
    Annotator(("lineart_realistic",), ("lineart/sk_model.pth",)),
    Annotator(("lineart_coarse",), ("lineart/sk_model2.pth",)),
    Annotator(("lineart_anime",), ("lineart_anime/netG.pth",)),
    Annotator(("lineart_anime_denoise",), ("manga_line/erika.pth",)),
    Annotator(("seg_ufade20k",), ("uniformer/upernet_global_small.pth",)),
    Annotator(("inpaint_only+lama",), ("lama/ControlNetLama.pth",)),
)
BY_MODULE = {module: annotator for annotator in ANNOTATORS for module in annotator.modules}


def unavailable() -> dict[str, list[str]]:
    """Each weight-needing module with the files it needs, as ``<DOWNLOADS>/<folder>/<file>`` paths."""
    return {module: [f"{DOWNLOADS}/{f}" for f in annotator.files] for module, annotator in BY_MODULE.items()}


def refusal(module: str) -> str | None:
    """Why ``module`` cannot run here, naming its files and their folder; None if it is not one of these."""
    annotator = BY_MODULE.get(module)
    if annotator is None:
        return None
    files = ", ".join(f.rsplit("/", 1)[1] for f in annotator.files)
    folder = f"{DOWNLOADS}/{annotator.files[0].rsplit('/', 1)[0]}/"
    return (
        f"{module!r} needs annotator weights ({files}, which the extension keeps in {folder}); this server "
        "never downloads them and does not run weight-needing annotators yet — send a detected map with "
        "module 'none', or use a preprocessor that needs no weights"
    )
