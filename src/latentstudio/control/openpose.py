"""The OpenPose preprocessors (openpose, openpose_hand, openpose_face, openpose_faceonly, openpose_full) from
lllyasviel's ``body_pose_model.pth``, ``hand_pose_model.pth`` and ``facenet.pth``, computed as
sd-webui-controlnet does (``annotator/openpose``: ``OpenposeDetector``, ``Body``, ``Hand``, ``Face``,
``util.handDetect`` / ``faceDetect``; ``scripts/preprocessor/legacy/processor.py``: ``OpenposeModel``).

The picture is resized to the preprocessor resolution and padded to 64 (as every legacy preprocessor), and
the networks see it in BGR order. Body: one scale, the picture's height to 184 px (half of 368), padded to 8
with grey 128, in [-0.5, 0.5); the 19 heatmaps and 38 part-affinity fields are upsampled ×8 (Lanczos), cut
to the unpadded size and resized to the picture (area when shrinking). Joint candidates are the maxima over
their four neighbours of each heatmap smoothed with a Gaussian of σ 3, above 0.1. Each limb scores every
candidate pair by its field sampled at 10 points along the segment (at least 9 above 0.05, mean plus a
penalty for segments longer than half the picture's height positive), pairs taken greedily by score; limbs
join into people, who need 4 joints and a mean score of 0.4. Hands: a square box past the wrist from the
arm's length (at least 20 px), blurred (σ 0.8), at 184, 368, 552 and 736 px; the averaged heatmaps at
128 px, each joint the maximum of the heaviest connected blob above 0.05 after σ 3 smoothing. Face: a square
box round the nose from the eyes and ears, at 384 px, the last stage's heatmaps resized back (bilinear,
corners aligned); each landmark the first maximum above 0.05. The drawing and the JSON are
:mod:`latentstudio.control.openpose_draw`'s; the networks :mod:`latentstudio.control.openpose_parts`'.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.openpose_draw import LIMBS, Person, draw, pose_json
from latentstudio.control.openpose_parts import BodyNetwork, FaceNetwork, HandNetwork
from latentstudio.control.preprocessor_types import Preprocessor, Settings
from latentstudio.control.weights import load_network

BODY = "openpose/body_pose_model.pth"
HAND = "openpose/hand_pose_model.pth"
FACE = "openpose/facenet.pth"
# module: (draw the body, look for hands, look for the face)
MODULES = {"openpose": (True, False, False), "openpose_hand": (True, True, False),
           "openpose_face": (True, False, True), "openpose_faceonly": (False, False, True),
           "openpose_full": (True, True, True)}  # fmt: skip
BOX, STRIDE, PAD_VALUE = 368, 8, 128
JOINT_THRESHOLD, FIELD_THRESHOLD, SAMPLES = 0.1, 0.05, 10
# the limbs people are assembled from: the drawn ones, then each shoulder to the ear on its side
PAIRS = (*LIMBS, (2, 16), (5, 17))
# the x and y part-affinity channels of each of PAIRS
FIELDS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
          (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))  # fmt: skip
HAND_SCALES, HAND_MAP, HAND_THRESHOLD = (0.5, 1.0, 1.5, 2.0), 128, 0.05
FACE_SIZE, FACE_THRESHOLD = 384, 0.05
MIN_BOX = 20  # smaller hand or face boxes are skipped
Net = Callable[[torch.Tensor], torch.Tensor]


def _interpolation(k: float) -> int:
    import cv2

    return cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4


def _resize(x: np.ndarray, width: int, height: int, k: float) -> np.ndarray:
    """``x`` ``[h, w]``, ``[h, w, 3]`` or ``[h, w, C]`` (channel by channel) to ``[height, width, …]``."""
    import cv2

    if x.ndim == 2 or x.shape[2] == 3:
        out: np.ndarray = cv2.resize(x, (width, height), interpolation=_interpolation(k))
        return out
    return np.stack([_resize(x[:, :, c], width, height, k) for c in range(x.shape[2])], axis=2)


def _to(x: np.ndarray, height: float, width: float) -> np.ndarray:
    """``smart_resize``: to ``height`` × ``width`` (truncated), area when the sum of sides shrinks."""
    return _resize(x, int(width), int(height), float(height + width) / float(x.shape[0] + x.shape[1]))


def _by(x: np.ndarray, factor: float) -> np.ndarray:
    """``smart_resize_k``: both sides × ``factor`` (truncated)."""
    height, width = x.shape[0] * factor, x.shape[1] * factor
    return _resize(x, int(width), int(height), float(height + width) / float(x.shape[0] + x.shape[1]))


def _maps(
    image: np.ndarray, run: Callable[[torch.Tensor], list[torch.Tensor]], height: int, width: int
) -> list[np.ndarray]:
    """``image`` ``[h, w, 3]`` uint8 BGR padded to 8 with grey, through ``run``; each output
    ``[1, C, h'/8, w'/8]`` back to ``[height, width, C]`` float32 (×8, padding cut, resized)."""
    pad_h, pad_w = -image.shape[0] % STRIDE, -image.shape[1] % STRIDE
    padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=PAD_VALUE)
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None].astype(np.float32) / 256 - 0.5))
    with torch.no_grad():
        outputs = [o[0].float().cpu().numpy().transpose(1, 2, 0) for o in run(x)]
    cut = padded.shape[0] - pad_h, padded.shape[1] - pad_w
    return [_to(_by(o, STRIDE)[: cut[0], : cut[1]], height, width) for o in outputs]


def body_maps(
    image: np.ndarray, net: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[np.ndarray, np.ndarray]:
    """``Body.__call__``'s network part: ``image`` ``[H, W, 3]`` uint8 BGR → heatmaps ``[H, W, 19]`` and
    part-affinity fields ``[H, W, 38]``, float64."""
    height, width = image.shape[:2]
    scaled = _by(image, 0.5 * BOX / height)
    fields, heat = _maps(scaled, lambda x: list(net(x)), height, width)
    return heat.astype(np.float64), fields.astype(np.float64)


def joints(heat: np.ndarray) -> list[np.ndarray]:
    """The joint candidates of each of the 18 body heatmaps (``heat`` ``[H, W, 19]``): ``[n, 4]`` float64
    rows (x, y, heatmap value, running id), in raster order."""
    from scipy.ndimage import gaussian_filter  # comes with scikit-image

    found, count = [], 0
    for part in range(18):
        raw = heat[:, :, part]
        smooth = gaussian_filter(raw, sigma=3)
        padded = np.pad(smooth, 1)
        peak = smooth > JOINT_THRESHOLD
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            peak &= smooth >= padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx]
        ys, xs = np.nonzero(peak)
        ids = np.arange(count, count + len(xs))
        found.append(np.stack([xs, ys, raw[ys, xs], ids], axis=1).astype(np.float64).reshape(-1, 4))
        count += len(xs)
    return found


def _limb_score(a: np.ndarray, b: np.ndarray, field: np.ndarray, height: int) -> float | None:
    """The score of the limb from candidate ``a`` to ``b`` along ``field`` ``[H, W, 2]``; None where fewer
    than 9 of the 10 samples pass the threshold or the score is not positive."""
    dx, dy = int(b[0] - a[0]), int(b[1] - a[1])
    norm = max(0.001, math.sqrt(dx * dx + dy * dy))
    xs = np.rint(np.linspace(a[0], b[0], num=SAMPLES)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], num=SAMPLES)).astype(int)
    along = field[ys, xs, 0] * (dx / norm) + field[ys, xs, 1] * (dy / norm)
    score = sum(along.tolist()) / SAMPLES + min(0.5 * height / norm - 1, 0)
    if np.count_nonzero(along > FIELD_THRESHOLD) > 0.8 * SAMPLES and score > 0:
        return float(score)
    return None


def limbs(found: list[np.ndarray], fields: np.ndarray, height: int) -> list[np.ndarray | None]:
    """For each of :data:`PAIRS`, the connections kept: ``[m, 5]`` rows (id a, id b, score, index a, index b),
    best first, each candidate used once; None where either end has no candidates."""
    out: list[np.ndarray | None] = []
    for (a, b), channels in zip(PAIRS, FIELDS, strict=True):
        ends_a, ends_b = found[a], found[b]
        if not len(ends_a) or not len(ends_b):
            out.append(None)
            continue
        field = fields[:, :, list(channels)]
        scored = []
        for i, j in np.ndindex(len(ends_a), len(ends_b)):
            score = _limb_score(ends_a[i], ends_b[j], field, height)
            if score is not None:
                scored.append((i, j, score))
        scored.sort(key=lambda c: c[2], reverse=True)
        kept: list[list[float]] = []
        used_a, used_b = set(), set()
        for i, j, score in scored:
            if i in used_a or j in used_b:
                continue
            kept.append([ends_a[i][3], ends_b[j][3], score, i, j])
            used_a.add(i)
            used_b.add(j)
            if len(kept) >= min(len(ends_a), len(ends_b)):
                break
        out.append(np.array(kept, np.float64).reshape(-1, 5))
    return out


def _add_limb(people: list[np.ndarray], row: np.ndarray, k: int, candidates: np.ndarray) -> list[np.ndarray]:
    """One connection ``row`` of limb ``k`` added to ``people`` (rows of 18 candidate ids, -1 where none,
    then the total score and the joint count)."""
    a, b = PAIRS[k]
    id_a, id_b, score = row[0], row[1], row[2]
    owners = [n for n, p in enumerate(people) if p[a] == id_a or p[b] == id_b][
        :2
    ]  # the extension fails past 2
    if len(owners) == 2 and not ((people[owners[0]][:-2] >= 0) & (people[owners[1]][:-2] >= 0)).any():
        first, second = people[owners[0]], people[owners[1]]  # disjoint halves of one person: merged
        first[:-2] += second[:-2] + 1
        first[-2:] += second[-2:]
        first[-2] += score
        return [p for n, p in enumerate(people) if n != owners[1]]
    if owners:  # the first owner gets end b (always when two overlap, as the extension does)
        person = people[owners[0]]
        if len(owners) == 2 or person[b] != id_b:
            person[b] = id_b
            person[-1] += 1
            person[-2] += candidates[int(id_b), 2] + score
    elif k < len(LIMBS):
        person = -np.ones(20)
        person[a], person[b] = id_a, id_b
        person[-1] = 2
        person[-2] = candidates[int(id_a), 2] + candidates[int(id_b), 2] + score
        people.append(person)
    return people


def assemble(found: list[np.ndarray], connections: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """People from the connections: (candidates ``[N, 4]``, people ``[P, 20]``: 18 candidate ids or -1, the
    total score, the joint count), keeping those with 4 joints or more and a mean score of at least 0.4."""
    candidates = np.concatenate(found, axis=0) if found else np.zeros((0, 4))
    people: list[np.ndarray] = []
    for k, rows in enumerate(connections):
        for row in rows if rows is not None else ():
            people = _add_limb(people, row, k, candidates)
    kept = [p for p in people if not (p[-1] < 4 or p[-2] / p[-1] < 0.4)]
    return candidates, np.array(kept, np.float64).reshape(-1, 20)


def bodies(
    image: np.ndarray, net: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
) -> list[np.ndarray]:
    """``Body.__call__`` and ``format_body_result``: each person's ``[18, 2]`` float64 joints in pixels of
    ``image`` ``[H, W, 3]`` uint8 BGR, NaN where missing."""
    heat, fields = body_maps(image, net)
    found = joints(heat)
    candidates, people = assemble(found, limbs(found, fields, image.shape[0]))
    out = []
    for person in people:
        ids = person[:18].astype(int)
        points = np.full((18, 2), np.nan)
        points[ids != -1] = candidates[ids[ids != -1], :2]
        out.append(points)
    return out


def hand_boxes(body: np.ndarray, height: int, width: int) -> list[tuple[int, int, int, bool]]:
    """``handDetect``: (x, y, side, is left) of the square box past each wrist whose shoulder, elbow and wrist
    were found (left first), from ``body`` ``[18, 2]`` in pixels of a ``height`` × ``width`` picture; the box
    is 1.5 × the longer of the forearm and 0.9 × the upper arm, centred a third of the forearm past the
    wrist, clipped to the picture, and skipped under 20 px."""
    boxes = []
    for shoulder, elbow, wrist, left in ((5, 6, 7, True), (2, 3, 4, False)):
        if np.isnan(body[[shoulder, elbow, wrist]]).any():
            continue
        (x1, y1), (x2, y2), (x3, y3) = (body[i].tolist() for i in (shoulder, elbow, wrist))
        forearm = math.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2)
        upper = math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2)
        side = 1.5 * max(forearm, 0.9 * upper)
        x = max(x3 + 0.33 * (x3 - x2) - side / 2, 0)
        y = max(y3 + 0.33 * (y3 - y2) - side / 2, 0)
        side = min(width - x if x + side > width else side, height - y if y + side > height else side)
        if side >= MIN_BOX:
            boxes.append((int(x), int(y), int(side), left))
    return boxes


def face_box(body: np.ndarray, height: int, width: int) -> tuple[int, int, int] | None:
    """``faceDetect``: (x, y, side) of the square box round the nose, its half side 3 × the larger offset
    of an eye or 1.5 × that of an ear, from ``body`` ``[18, 2]`` in pixels; None without the nose and one of
    them, or under 20 px. (Like the extension, it clips by the half side on the right and bottom.)"""
    if np.isnan(body[0]).any() or np.isnan(body[14:18]).any(axis=1).all():
        return None
    x0, y0 = body[0].tolist()
    half = 0.0
    for part, factor in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5)):
        if not np.isnan(body[part]).any():
            x1, y1 = body[part].tolist()
            half = max(half, max(abs(x0 - x1), abs(y0 - y1)) * factor)
    x, y = max(x0 - half, 0), max(y0 - half, 0)
    side = min(width - x if x + half > width else half * 2, height - y if y + half > height else half * 2)
    return (int(x), int(y), int(side)) if side >= MIN_BOX else None


def hand_points(crop: np.ndarray, net: Net) -> np.ndarray:
    """``Hand.__call__``: ``crop`` ``[h, w, 3]`` uint8 BGR → ``[21, 2]`` int (x, y) in its pixels, (0, 0)
    where a joint's smoothed map never exceeds the threshold."""
    import cv2
    from scipy.ndimage import gaussian_filter
    from skimage.measure import label

    blurred = cv2.GaussianBlur(crop, (0, 0), 0.8)
    heat = np.zeros((HAND_MAP, HAND_MAP, 22))
    for scale in HAND_SCALES:
        resized = _to(blurred, scale * BOX, scale * BOX)
        heat += _maps(resized, lambda x: [net(x)], HAND_MAP, HAND_MAP)[0] / len(HAND_SCALES)
    points = []
    for part in range(21):
        raw = heat[:, :, part]
        above = gaussian_filter(raw, sigma=3) > HAND_THRESHOLD
        if not above.any():
            points.append((0, 0))
            continue
        blobs, count = label(above.astype(np.uint8), return_num=True, connectivity=2)  # type: ignore[no-untyped-call,unused-ignore]
        heaviest = int(np.argmax([raw[blobs == i].sum() for i in range(1, count + 1)])) + 1
        kept = np.where(blobs == heaviest, raw, 0.0)
        row = int(kept.max(axis=1).argmax())
        column = int(kept[row].argmax())
        points.append((int(column * crop.shape[1] / HAND_MAP), int(row * crop.shape[0] / HAND_MAP)))
    return np.array(points)


def face_points(crop: np.ndarray, net: Net) -> np.ndarray:
    """``Face.__call__`` and ``compute_peaks_from_heatmaps``: ``crop`` ``[h, w, 3]`` uint8 BGR → ``[n, 2]``
    int (x, y), the first maximum of each of the 71 maps that exceeds the threshold (maps that do not are
    left out, so n ≤ 71)."""
    import torch.nn.functional as F  # noqa: N812 - the usual name

    x = torch.from_numpy(_to(crop, FACE_SIZE, FACE_SIZE)).permute(2, 0, 1) / 256.0 - 0.5
    with torch.no_grad():
        heat = F.interpolate(net(x[None]), crop.shape[:2], mode="bilinear", align_corners=True)[0].numpy()
    points = []
    for plane in heat:
        if plane.max() > FACE_THRESHOLD:
            y, x_ = np.unravel_index(int(plane.argmax()), plane.shape)
            points.append((int(x_), int(y)))
    return np.array(points, dtype=np.int64).reshape(-1, 2)


def _placed(points: np.ndarray, x: int, y: int, height: int, width: int) -> np.ndarray:
    """Crop pixels → fractions of the picture, float32; a 0 coordinate (not found) becomes ``-1 / size``."""
    out = points.astype(np.float32)
    out[:, 0] = np.where(out[:, 0] < 1e-6, -1, out[:, 0] + x) / float(width)
    out[:, 1] = np.where(out[:, 1] < 1e-6, -1, out[:, 1] + y) / float(height)
    return out


def _person(bgr: np.ndarray, points: np.ndarray, hand: Net | None, face: Net | None) -> Person:
    """One body's ``points`` ``[18, 2]`` (pixels of ``bgr`` ``[H, W, 3]``) with its hands and face looked
    for where their networks are given, all in fractions of the picture."""
    height, width = bgr.shape[:2]
    hands: dict[bool, np.ndarray] = {}
    if hand is not None:
        for x, y, side, left in hand_boxes(points, height, width):
            hands[left] = _placed(hand_points(bgr[y : y + side, x : x + side], hand), x, y, height, width)
    box = face_box(points, height, width) if face is not None else None
    found_face = None
    if box is not None and face is not None:
        x, y, side = box
        spots = face_points(bgr[y : y + side, x : x + side], face)
        found_face = _placed(spots, x, y, height, width) if len(spots) else None
    scaled = points / np.array([float(width), float(height)])
    return Person(scaled, hands.get(True), hands.get(False), found_face)


def people(image: np.ndarray, body: Callable[..., tuple[torch.Tensor, torch.Tensor]], hand: Net | None,
           face: Net | None) -> list[Person]:  # fmt: skip
    """``detect_poses``: ``image`` ``[H, W, 3]`` uint8 RGB → each person found, hands (``hand`` given) and
    face (``face`` given) included, in fractions of ``W`` and ``H``."""
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    return [_person(bgr, points, hand, face) for points in bodies(bgr, body)]


def estimate(
    image: np.ndarray, resolution: int, body: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    hand: Net | None, face: Net | None, *, draw_body: bool = True,
) -> tuple[np.ndarray, dict[str, object]]:  # fmt: skip
    """``OpenposeModel.run_model``: ``image`` ``[H, W, 3]`` uint8 RGB at the preprocessor ``resolution``
    (padded to 64) → the pose map ``[h, w, 3]`` uint8 (padding cut off) and the pose JSON (its canvas the
    padded picture). Hands and face are looked for and drawn where their networks are given."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    found = people(padded, body, hand, face)
    size = padded.shape[:2]
    canvas = draw(found, *size, body=draw_body, hands=hand is not None, face=face is not None)
    return np.ascontiguousarray(canvas[:height, :width]), pose_json(found, *size)


def detect_pose(module: str, image: np.ndarray, s: Settings) -> tuple[np.ndarray, dict[str, object]]:
    """The openpose module ``module`` on ``image`` ``[H, W, 3]`` uint8 RGB (:func:`estimate`), the networks
    loaded from ``s.weights``: the located files in the order of the entry's ``files``."""
    draw_body, with_hands, with_face = MODULES[module]
    nets = iter(s.weights)
    body = load_network(next(nets), BodyNetwork, "OpenPose body")
    hand = load_network(next(nets), HandNetwork, "OpenPose hand") if with_hands else None
    face = load_network(next(nets), FaceNetwork, "OpenPose face") if with_face else None
    return estimate(image, s.resolution, body, hand, face, draw_body=draw_body)


def _entry(module: str, files: tuple[str, ...], priority: int = 0) -> Preprocessor:
    """A legacy entry: the table hides the resolution of some (openpose_face, _faceonly, _hand), but the
    legacy wrapper keeps the class's Resolution slider (so ``module_detail`` shows it) and passes
    ``processor_res`` to every one of them."""
    return Preprocessor(
        module,
        lambda image, s: detect_pose(module, image, s)[0],
        priority=priority,
        pose=partial(detect_pose, module),
        tags=("OpenPose",),
        files=files,
    )


ENTRIES: tuple[Preprocessor, ...] = (
    _entry("openpose", (BODY,)),
    _entry("openpose_face", (BODY, FACE)),
    _entry("openpose_faceonly", (BODY, FACE)),
    _entry("openpose_full", (BODY, HAND, FACE), priority=100),
    _entry("openpose_hand", (BODY, HAND)),
)
