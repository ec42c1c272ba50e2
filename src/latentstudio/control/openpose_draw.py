"""The OpenPose pose as sd-webui-controlnet keeps it, draws it and hands it back as JSON
(``annotator/openpose/util.py``: ``draw_bodypose``, ``draw_handpose``, ``draw_facepose``;
``annotator/openpose/__init__.py``: ``draw_poses``, ``encode_poses_as_json``).

Coordinates are fractions of the canvas the pose was found on (x of its width, y of its height). The body is
18 joints in OpenPose's COCO order (nose, neck, right shoulder, elbow, wrist, left shoulder, elbow, wrist,
right hip, knee, ankle, left hip, knee, ankle, right eye, left eye, right ear, left ear). Hands are 21
joints; the face is the landmarks found (at most 71: the extension keeps the background map's peak too).
Drawing happens on a black canvas: each limb an ellipse 4 px across in its colour at 60 %, each joint a
filled circle of radius 4; hand bones 2 px lines coloured round the hue circle with red joints; face
landmarks white dots of radius 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# the body's limbs as joint pairs (0-based), in the order they are drawn and coloured
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))  # fmt: skip
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))  # fmt: skip
# the hand's bones: the wrist (0) to each finger's base, then along the finger
BONES = tuple((0 if j == 0 else 4 * f + j, 4 * f + j + 1) for f in range(5) for j in range(4))
STICK = 4  # half the width of a drawn limb
EPS = 0.01  # hand and face points at or left of / above this pixel are not drawn


@dataclass(frozen=True)
class Person:
    """One person: ``body`` ``[18, 2]`` float64 (NaN rows where a joint was not found), ``left_hand`` and
    ``right_hand`` ``[21, 2]`` float32 and ``face`` ``[n, 2]`` float32, or None where not looked for or not
    found. A hand joint that was not found sits at ``-1 / size`` (the extension's marker)."""

    body: np.ndarray
    left_hand: np.ndarray | None = None
    right_hand: np.ndarray | None = None
    face: np.ndarray | None = None


def _scale(points: np.ndarray, canvas: np.ndarray) -> tuple[int | float, int | float]:
    """(W, H) of the canvas when every present coordinate is a fraction in [-1, 1], else (1.0, 1.0)."""
    present = points[~np.isnan(points).any(axis=1)]
    if len(present) and bool((np.abs(present) <= 1).all()):
        return canvas.shape[1], canvas.shape[0]
    return 1.0, 1.0


def draw_body(canvas: np.ndarray, body: np.ndarray) -> None:
    """``draw_bodypose`` onto ``canvas`` ``[H, W, 3]`` uint8 (in place); ``body`` ``[18, 2]`` as
    :class:`Person`."""
    import cv2

    width, height = _scale(body, canvas)
    for (a, b), colour in zip(LIMBS, COLOURS, strict=False):
        if np.isnan(body[a]).any() or np.isnan(body[b]).any():
            continue
        xs = np.array([body[a][0], body[b][0]]) * float(width)
        ys = np.array([body[a][1], body[b][1]]) * float(height)
        length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        centre = (int(np.mean(xs)), int(np.mean(ys)))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, np.asarray(polygon), [int(float(c) * 0.6) for c in colour])
    for point, colour in zip(body, COLOURS, strict=False):
        if not np.isnan(point).any():
            cv2.circle(canvas, (int(point[0] * width), int(point[1] * height)), 4, colour, thickness=-1)


def bone_colour(index: int) -> tuple[float, float, float]:
    """The colour of hand bone ``index`` (0–19): hue ``index / 20`` at full saturation and value, ×255,
    computed as matplotlib's ``hsv_to_rgb`` does (cv2 rounds it when drawing)."""
    h6 = index / float(len(BONES)) * 6.0
    sector = int(h6)
    f = h6 - sector
    q, t = 1.0 - f, 1.0 - (1.0 - f)
    rgb = ((1.0, t, 0.0), (q, 1.0, 0.0), (0.0, 1.0, t), (0.0, q, 1.0), (t, 0.0, 1.0), (1.0, 0.0, q))[
        sector % 6
    ]
    r, g, b = (c * 255.0 for c in rgb)
    return r, g, b


def draw_hand(canvas: np.ndarray, hand: np.ndarray | None) -> None:
    """``draw_handpose`` onto ``canvas`` ``[H, W, 3]`` uint8 (in place); ``hand`` ``[21, 2]`` or None."""
    import cv2

    if hand is None or len(hand) == 0:
        return
    width, height = _scale(hand, canvas)
    pixels = [None if np.isnan(p).any() else (int(p[0] * width), int(p[1] * height)) for p in hand]
    for i, (a, b) in enumerate(BONES):
        start, end = pixels[a], pixels[b]
        if start is not None and end is not None and min(*start, *end) > EPS:
            cv2.line(canvas, start, end, bone_colour(i), thickness=2)
    for pixel in pixels:
        if pixel is not None and min(pixel) > EPS:
            cv2.circle(canvas, pixel, 4, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, face: np.ndarray | None) -> None:
    """``draw_facepose`` onto ``canvas`` ``[H, W, 3]`` uint8 (in place); ``face`` ``[n, 2]`` or None."""
    import cv2

    if face is None or len(face) == 0:
        return
    width, height = _scale(face, canvas)
    for point in face:
        if not np.isnan(point).any():
            x, y = int(point[0] * width), int(point[1] * height)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)


def draw(people: list[Person], height: int, width: int, *, body: bool, hands: bool, face: bool) -> np.ndarray:
    """``draw_poses``: each person's body, left and right hand and face (those asked for), in that order,
    on a black ``[height, width, 3]`` uint8 canvas."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for person in people:
        if body:
            draw_body(canvas, person.body)
        if hands:
            draw_hand(canvas, person.left_hand)
            draw_hand(canvas, person.right_hand)
        if face:
            draw_face(canvas, person.face)
    return canvas


def _flat(points: np.ndarray | None) -> list[float] | None:
    """x, y, 1.0 per point (0, 0, 0 where missing); None for no points."""
    if points is None or len(points) == 0:
        return None
    out: list[float] = []
    for x, y in points:
        out += [0.0, 0.0, 0.0] if math.isnan(x) or math.isnan(y) else [float(x), float(y), 1.0]
    return out


def pose_json(people: list[Person], height: int, width: int) -> dict[str, object]:
    """``encode_poses_as_json``: the OpenPose JSON the extension returns for the openpose modules —
    ``people`` (``pose_keypoints_2d``, ``face_keypoints_2d``, ``hand_left_keypoints_2d``,
    ``hand_right_keypoints_2d``: flat x, y, confidence lists in canvas fractions, or None), ``animals``
    (empty here), ``canvas_height``, ``canvas_width``."""
    return {
        "people": [
            {
                "pose_keypoints_2d": _flat(p.body),
                "face_keypoints_2d": _flat(p.face),
                "hand_left_keypoints_2d": _flat(p.left_hand),
                "hand_right_keypoints_2d": _flat(p.right_hand),
            }
            for p in people
        ],
        "animals": [],
        "canvas_height": height,
        "canvas_width": width,
    }
