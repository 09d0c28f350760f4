"""Synthetic COCO-format person-keypoint datasets: kerapose's built-in data.

:func:`generate_synthetic_coco` writes a COCO-layout root that
:class:`kerapose.data.coco.CocoKeypoints` loads::

    ROOT/annotations/person_keypoints_train.json   ROOT/train/*.jpg
    ROOT/annotations/person_keypoints_val.json     ROOT/val/*.jpg

Each image shows several articulated stick figures on a textured background. A figure is a
random pose of a small kinematic model (torso, head with eyes / ears / nose, two-segment arms
and legs with human-like joint ranges, random scale, roll and facing), drawn as thick limbs.
Left limbs are drawn lighter and right limbs darker than the person's colour and the face
points where the person faces, so left and right can be told apart. The colour code is a
convention of this generator: a mirrored image (left/right labels swapped) shows a figure
whose lighter limbs are its right ones, which no generated image does, so flip augmentation
takes that cue away (the quickstart recipe trains without flips). ``style="clothed"`` draws
adult limb widths, shorts, bare forearms and shins, hands and shoes: elbows, knees, wrists and
ankles become colour boundaries, as clothing makes them on real people, instead of points along
a one-colour stick. That style and larger figures (``person_height``) are what the quickstart
recipe trains on; the default stick style is the harder set.

Labels come from the renderer, so they are exact:

* keypoints ``(x, y, v)``: ``v = 2`` where the keypoint's pixel shows its person, ``v = 1``
  where a person drawn later covers it, ``v = 0`` (and ``x = y = 0``) outside the image.
  Coordinates follow kerapose's convention (pixel ``j`` is centred on ``x = j``).
* ``segmentation``: the person's visible pixels, as polygons where they rasterise back to
  exactly that mask through pycocotools' ``annToMask`` (which puts pixel centres at
  ``j + 0.5``) and as RLE where the mask has holes; ``area`` is that mask's area, ``bbox`` is the mask's box grown to hold every labelled keypoint (an
  occluded keypoint can lie just outside the visible part; box-based heads should see it).
* optionally (``ignore_regions``) a crowd of small figures annotated as one ``iscrowd = 1``
  RLE region, and persons drawn but annotated without keypoints (``num_keypoints = 0``), so
  the loss-ignore code paths see real cases.

Generation is deterministic for a seed (each image has its own seed sequence, so the val
split does not depend on ``num_train``) and atomic (a temporary directory beside ``out_dir``
is renamed into place at the end).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from kerapose.skeleton import COCO17, KeypointSet, get_keypoint_set

__all__ = [
    "SyntheticPerson",
    "SyntheticScene",
    "render_scene",
    "scene_rng",
    "generate_synthetic_coco",
    "SPLITS",
    "STYLES",
]

SPLITS = ("train", "val")
STYLES = ("stick", "clothed")  # figure drawing styles (render_scene)
_SPLIT_ID_OFFSET = {"train": 0, "val": 1_000_000}  # image / annotation ids unique across splits
_MAX_IMAGES = 1_000_000
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel accurate drawing
_ONE = 1 << _SHIFT

# COCO-17 indices used by the kinematic model.
_NOSE, _LEYE, _REYE, _LEAR, _REAR = 0, 1, 2, 3, 4
_LSH, _RSH, _LEL, _REL, _LWR, _RWR = 5, 6, 7, 8, 9, 10
_LHIP, _RHIP, _LKN, _RKN, _LAN, _RAN = 11, 12, 13, 14, 15, 16

_SKIN = np.array(  # BGR skin-like head colours, plus a few non-skin ones
    [[180, 200, 240], [140, 170, 220], [100, 140, 190], [70, 100, 150], [50, 70, 100],
     [200, 220, 250], [120, 160, 120], [200, 160, 160]],
    np.float64,
)


@dataclass
class SyntheticPerson:
    """One drawn figure: its COCO-17 keypoints and masks, in image pixels."""

    keypoints: np.ndarray  # [17, 3] (x, y, v) COCO-17 order, v in {0, 1, 2}
    mask: np.ndarray  # [H, W] bool, every pixel the figure covers
    visible: np.ndarray  # [H, W] bool, the pixels still showing it after later people
    labelled: bool = True  # False: drawn, but annotated without keypoints
    facing: float = 0.0  # -1 profile facing left, 0 frontal, +1 profile facing right


@dataclass
class SyntheticScene:
    """A rendered image with its people in draw order (back to front) and optional crowd."""

    image: np.ndarray  # [H, W, 3] uint8 BGR, what is written to disk
    background: np.ndarray  # [H, W, 3] uint8 BGR, the same image before any figure was drawn
    people: list[SyntheticPerson] = field(default_factory=list)
    crowd: np.ndarray | None = None  # [H, W] bool visible crowd region, or None


# ---------------------------------------------------------------------------------------------
# Kinematic model


@dataclass
class _Figure:
    kp: np.ndarray  # [17, 2] float pixel coordinates
    head_c: np.ndarray  # [2]
    head_r: float
    torso: np.ndarray  # [4, 2] polygon
    neck: tuple[np.ndarray, np.ndarray]
    arm_t: int
    leg_t: int
    far_side: str  # "left" or "right": drawn behind the torso
    facing: float


def _unit(angle: float, sign: float) -> np.ndarray:
    """Direction at ``angle`` from straight down, turned toward ``sign`` (+1: +x, -1: -x)."""
    return np.array([sign * math.sin(angle), math.cos(angle)])


# Limb thickness as a fraction of body height: (arms, legs) per style. "clothed" uses adult
# proportions (upper arm ~7 %, thigh ~9.5 % of stature); "stick" draws thinner limbs.
_LIMB_WIDTH = {"stick": (0.055, 0.075), "clothed": (0.07, 0.095)}


def _sample_figure(rng: np.random.Generator, height_px: float, style: str = "stick") -> _Figure:
    """A random pose, built in units of body height around the pelvis, then rolled and scaled."""
    u = rng.uniform
    # Facing: about half frontal, the rest three-quarter to profile, either way.
    s = u(-0.3, 0.3) if u() < 0.5 else float(rng.choice([-1.0, 1.0])) * u(0.55, 1.0)
    wf = max(0.3, math.sqrt(max(0.0, 1.0 - s * s))) * u(0.85, 1.2)  # apparent body width
    profile = abs(s) >= 0.55
    fwd = 1.0 if s >= 0 else -1.0

    kp = np.zeros((17, 2))
    lean = rng.normal(0.0, 0.08) + (0.12 * fwd * u() if profile else 0.0)
    up = np.array([math.sin(lean), -math.cos(lean)])
    side = np.array([math.cos(lean), math.sin(lean)])  # toward the person's left when frontal
    pelvis = np.zeros(2)
    hip_w, sh_w = 0.085 * wf, 0.115 * wf
    kp[_LHIP], kp[_RHIP] = pelvis + hip_w * side, pelvis - hip_w * side
    sc = pelvis + 0.30 * u(0.92, 1.08) * up
    kp[_LSH], kp[_RSH] = sc + sh_w * side, sc - sh_w * side

    tilt = lean + rng.normal(0.0, 0.12)
    hup = np.array([math.sin(tilt), -math.cos(tilt)])
    hside = np.array([math.cos(tilt), math.sin(tilt)])
    head_c = sc + 0.125 * up + 0.07 * hup
    r = 0.068 * u(0.9, 1.1)
    hwf = max(0.3, math.sqrt(max(0.0, 1.0 - s * s)))

    def head_pt(lateral: float, down: float) -> np.ndarray:
        return head_c + r * (lateral * hside - down * hup)

    kp[_NOSE] = head_pt(0.75 * s, 0.15)
    kp[_LEYE] = head_pt(0.35 * hwf + 0.45 * s, -0.25)
    kp[_REYE] = head_pt(-0.35 * hwf + 0.45 * s, -0.25)
    kp[_LEAR] = head_pt(0.85 * hwf - 0.35 * s, -0.05)
    kp[_REAR] = head_pt(-0.85 * hwf - 0.35 * s, -0.05)

    ua, fa = 0.17 * u(0.9, 1.1), 0.15 * u(0.9, 1.1)
    th, sh = 0.245 * u(0.9, 1.1), 0.245 * u(0.9, 1.1)
    for shoulder, elbow, wrist, out in ((_LSH, _LEL, _LWR, 1.0), (_RSH, _REL, _RWR, -1.0)):
        if profile:  # arms swing forward / back, elbows bend forward
            sign = fwd
            a1 = math.radians(u(-50, 150))
            a2 = a1 + math.radians(u(0, 130))
        else:  # arms swing out to the side, elbows mostly bend in / up
            sign = out
            a1 = math.radians(u(-15, 165) if u() < 0.35 else u(-15, 70))
            bend = math.radians(u(0, 145))
            a2 = a1 - bend if u() < 0.75 else a1 + bend
        kp[elbow] = kp[shoulder] + ua * _unit(a1, sign)
        kp[wrist] = kp[elbow] + fa * _unit(a2, sign)
    crouch = profile and u() < 0.2
    for hip, knee, ankle, out in ((_LHIP, _LKN, _LAN, 1.0), (_RHIP, _RKN, _RAN, -1.0)):
        if profile:  # walking stride, knees bend backward; sometimes sitting / crouching
            sign = fwd
            a1 = math.radians(u(40, 85) if crouch else u(-35, 45))
            a2 = a1 - math.radians(u(60, 120) if crouch else u(0, 70))
        else:
            sign = out
            a1 = math.radians(u(-8, 40))
            a2 = a1 + math.radians(u(-35, 15))
        kp[knee] = kp[hip] + th * _unit(a1, sign)
        kp[ankle] = kp[knee] + sh * _unit(a2, sign)

    # Torso polygon: never thinner than a profile body, and always holding the joints.
    tw_sh, tw_hip = max(sh_w, 0.06), max(hip_w, 0.055)
    torso = np.stack([sc + tw_sh * side, sc - tw_sh * side, pelvis - tw_hip * side, pelvis + tw_hip * side])
    neck = (sc.copy(), head_c.copy())

    # Roll (mostly upright, sometimes strongly tilted), then scale to pixels.
    roll = rng.normal(0.0, 0.15) if u() < 0.93 else u(-1.6, 1.6)
    c, sn = math.cos(roll), math.sin(roll)
    rot = np.array([[c, -sn], [sn, c]]) * height_px

    def tf(p: np.ndarray) -> np.ndarray:
        return p @ rot.T

    far = ("left" if s > 0 else "right") if abs(s) > 0.2 else ("left" if u() < 0.5 else "right")
    return _Figure(
        kp=tf(kp),
        head_c=tf(head_c),
        head_r=r * height_px,
        torso=tf(torso),
        neck=(tf(neck[0]), tf(neck[1])),
        arm_t=max(2, int(round(_LIMB_WIDTH[style][0] * height_px))),
        leg_t=max(2, int(round(_LIMB_WIDTH[style][1] * height_px))),
        far_side=far,
        facing=s,
    )


def _translated(fig: _Figure, d: np.ndarray) -> _Figure:
    return _Figure(
        kp=fig.kp + d, head_c=fig.head_c + d, head_r=fig.head_r, torso=fig.torso + d,
        neck=(fig.neck[0] + d, fig.neck[1] + d), arm_t=fig.arm_t, leg_t=fig.leg_t,
        far_side=fig.far_side, facing=fig.facing,
    )


# ---------------------------------------------------------------------------------------------
# Drawing


def _fx(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def _draw_figure(canvas: np.ndarray, fig: _Figure, colors: dict | None) -> None:
    """Draw ``fig`` back to front. ``colors=None`` draws a binary mask (value 1, no anti-aliasing)."""
    aa = cv2.LINE_AA if colors is not None else cv2.LINE_8

    def col(name: str):
        return 1 if colors is None else colors[name]

    def limb(a: int, b: int, t: int, name: str) -> None:
        cv2.line(canvas, _fx(fig.kp[a]), _fx(fig.kp[b]), col(name), t, aa, _SHIFT)

    # "clothed" colours (see _figure_colors) give the lower segments their own colour and end
    # them with a hand / shoe, so elbows, knees, wrists and ankles show as colour boundaries.
    clothed = colors is not None and "forearm_left" in colors

    def end(p: int, t: int, name: str) -> None:
        cv2.circle(canvas, _fx(fig.kp[p]), int(round(0.5 * t * _ONE)), col(name), -1, aa, _SHIFT)

    def arm(side: str) -> None:
        s, e, w = (_LSH, _LEL, _LWR) if side == "left" else (_RSH, _REL, _RWR)
        limb(s, e, fig.arm_t, side)
        limb(e, w, fig.arm_t, f"forearm_{side}" if clothed else side)
        if clothed:
            end(w, fig.arm_t, "hand")

    def leg(side: str) -> None:
        h, k, a = (_LHIP, _LKN, _LAN) if side == "left" else (_RHIP, _RKN, _RAN)
        limb(h, k, fig.leg_t, f"thigh_{side}" if clothed else side)
        limb(k, a, fig.leg_t, f"shin_{side}" if clothed else side)
        if clothed:
            end(a, fig.leg_t, "foot")

    near = "right" if fig.far_side == "left" else "left"
    arm(fig.far_side)
    leg(fig.far_side)
    leg(near)
    pts = np.array([_fx(p) for p in fig.torso], np.int32)
    cv2.fillConvexPoly(canvas, pts, col("torso"), aa, _SHIFT)
    cv2.line(canvas, _fx(fig.neck[0]), _fx(fig.neck[1]), col("torso"), fig.arm_t, aa, _SHIFT)
    # Ears stick out of the head a little; then the head, then the face details on top.
    ear_r = int(round(0.3 * fig.head_r * _ONE))
    for e in (_LEAR, _REAR):
        cv2.circle(canvas, _fx(fig.kp[e]), ear_r, col("ear"), -1, aa, _SHIFT)
    cv2.circle(canvas, _fx(fig.head_c), int(round(fig.head_r * _ONE)), col("head"), -1, aa, _SHIFT)
    if colors is not None:
        eye_r = int(round(max(0.7, 0.2 * fig.head_r) * _ONE))
        for e in (_LEYE, _REYE):
            cv2.circle(canvas, _fx(fig.kp[e]), eye_r, colors["eye"], -1, aa, _SHIFT)
        cv2.circle(canvas, _fx(fig.kp[_NOSE]), eye_r, colors["nose"], -1, aa, _SHIFT)
    arm(near)


def _figure_colors(rng: np.random.Generator, avoid: np.ndarray, style: str = "stick") -> dict:
    """Per-person colours: a saturated base far from ``avoid`` (the local background colour);
    left limbs lighter and right limbs darker than the base, so sides are distinguishable.
    ``style="clothed"`` adds a second garment colour for the thighs (shorts), bare skin for the
    forearms and shins, hands and shoes (drawn after the stick colours' random draws, so the
    stick style's images do not change)."""
    best, best_d = None, -1.0
    for _ in range(6):
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(110, 256), rng.integers(90, 256)]]])
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)
        d = float(np.abs(bgr - avoid).sum())
        if d > best_d:
            best, best_d = bgr, d
    base = best
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.85, 1.1)
    as_tuple = lambda c: tuple(float(v) for v in np.clip(c, 0, 255))  # noqa: E731
    colors = {
        "torso": as_tuple(base),
        "left": as_tuple(base + (255.0 - base) * 0.45),
        "right": as_tuple(base * 0.55),
        "head": as_tuple(skin),
        "ear": as_tuple(skin * 0.8),
        "eye": as_tuple(skin * 0.2),
        "nose": as_tuple(skin * np.array([0.35, 0.35, 0.9])),
    }
    if style == "clothed":
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(60, 256), rng.integers(40, 230)]]])
        shorts = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)
        colors.update({
            "thigh_left": as_tuple(shorts + (255.0 - shorts) * 0.4), "thigh_right": as_tuple(shorts * 0.6),
            "forearm_left": as_tuple(skin * 1.1), "forearm_right": as_tuple(skin * 0.75),
            "shin_left": as_tuple(skin * 1.05), "shin_right": as_tuple(skin * 0.7),
            "hand": as_tuple(skin * 0.9), "foot": as_tuple(rng.uniform(0, 80, 3)),
        })
    return colors


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A seeded textured background: gradient, stripes, smooth noise or blocks, plus clutter."""
    kind = int(rng.integers(4))
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, math.pi)
    proj = xx * math.cos(ang) + yy * math.sin(ang)
    if kind == 0:  # linear gradient
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    elif kind == 1:  # stripes, soft or hard
        t = 0.5 + 0.5 * np.sin(proj * (2 * math.pi / rng.uniform(6, 40)) + rng.uniform(0, 6.3))
        if rng.uniform() < 0.5:
            t = (t > 0.5).astype(np.float32)
    elif kind == 2:  # smooth colour noise
        g = rng.uniform(0, 255, (int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3)).astype(np.float32)
        img = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
        t = None
    else:  # random blocks
        g = rng.uniform(0, 255, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3)).astype(np.float32)
        img = cv2.resize(g, (w, h), interpolation=cv2.INTER_NEAREST)
        t = None
    if t is not None:
        img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(2, 12))
    img = img + grain + rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(3.0)
    img = np.clip(img, 0, 255).astype(np.uint8)
    # Clutter: shapes and lines that are not people (some look like limbs).
    for _ in range(int(rng.integers(0, 5))):
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        shape = int(rng.integers(3))
        if shape == 0:
            cv2.circle(img, p, int(rng.integers(3, max(4, min(h, w) // 6))), color, -1, cv2.LINE_AA)
        elif shape == 1:
            q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.rectangle(img, p, q, color, -1)
        else:
            q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p, q, color, int(rng.integers(1, max(2, min(h, w) // 25))), cv2.LINE_AA)
    return img


# ---------------------------------------------------------------------------------------------
# Scene composition


def _place(rng: np.random.Generator, fig: _Figure, h: int, w: int, margin: float) -> _Figure:
    """Translate ``fig`` to a random spot where its keypoint box lies inside the image grown
    by ``margin`` (a fraction of the figure's size), so figures are sometimes truncated."""
    lo, hi = fig.kp.min(0), fig.kp.max(0)
    size = hi - lo
    slack_lo = -lo - margin * size  # translation bounds per axis
    slack_hi = np.array([w - 1, h - 1], np.float64) - hi + margin * size
    d = np.empty(2)
    for i in range(2):
        if slack_hi[i] >= slack_lo[i]:
            d[i] = rng.uniform(slack_lo[i], slack_hi[i])
        else:  # bigger than the image: centre it with some jitter
            d[i] = (slack_lo[i] + slack_hi[i]) / 2 + rng.normal(0, 0.05 * size[i])
    return _translated(fig, d)


def _figure_mask(fig: _Figure, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    _draw_figure(m, fig, None)
    return m.astype(bool)


def _in_image(kp: np.ndarray, h: int, w: int) -> np.ndarray:
    x, y = kp[:, 0], kp[:, 1]
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def _pixels(kp: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ix = np.clip(np.round(kp[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.round(kp[:, 1]).astype(int), 0, h - 1)
    return iy, ix


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent per image, so any image can be
    re-rendered alone (``render_scene(scene_rng(...), ...)``) and splits do not depend on each other."""
    if split not in _SPLIT_ID_OFFSET:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(SPLITS.index(split), int(index))))


def render_scene(
    rng: np.random.Generator,
    image_size: tuple[int, int] = (192, 192),
    people: tuple[int, int] = (1, 4),
    crowd_rate: float = 0.05,
    unlabeled_rate: float = 0.05,
    style: str = "stick",
    person_height: tuple[float, float] = (0.4, 0.95),
) -> SyntheticScene:
    """Render one image: background, an optional crowd, an optional unlabelled person, then
    ``people`` labelled figures placed so that each keeps most of its keypoints visible.

    Args:
        rng: the image's generator (see :func:`scene_rng`).
        image_size: ``(height, width)`` in pixels.
        people: inclusive ``(min, max)`` number of labelled people; fewer are drawn when no
            placement leaves earlier people visible enough.
        crowd_rate: probability of an ``iscrowd`` region of small figures.
        unlabeled_rate: probability of a figure annotated without keypoints.
        style: ``"stick"`` (thin limbs, one colour per side) or ``"clothed"`` (adult limb
            widths; shorts, bare forearms and shins, hands and shoes, so the joints between
            segments are colour boundaries).
        person_height: range of the labelled figures' heights, as fractions of the image height.
    """
    (h, w), (lo, hi) = _check_scene_args(image_size, people)
    if style not in STYLES:
        raise ValueError(f"style: expected one of {STYLES}, got {style!r}")
    h_lo, h_hi = _check_person_height(person_height)
    for name, r in (("crowd_rate", crowd_rate), ("unlabeled_rate", unlabeled_rate)):
        if not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1], got {r!r}")
    image = _background(rng, h, w)
    background = image.copy()
    occupied: list[tuple[_Figure, np.ndarray, bool]] = []  # (figure, mask, labelled), back to front

    crowd_mask = None
    if rng.uniform() < crowd_rate:
        bw, bh = rng.uniform(0.3, 0.6) * w, rng.uniform(0.25, 0.45) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        crowd_mask = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(5, 11))):
            fig = _sample_figure(rng, rng.uniform(0.12, 0.22) * h, style)
            centre = fig.kp.mean(0)
            fig = _translated(fig, np.array([rng.uniform(x0, x0 + bw), rng.uniform(y0, y0 + bh)]) - centre)
            local = image[int(y0 + bh / 2), int(x0 + bw / 2)].astype(float)
            _draw_figure(image, fig, _figure_colors(rng, local, style))
            crowd_mask |= _figure_mask(fig, h, w)

    if rng.uniform() < unlabeled_rate:
        fig = _place(rng, _sample_figure(rng, rng.uniform(0.2, 0.4) * h, style), h, w, margin=0.0)
        occupied.append((fig, _figure_mask(fig, h, w), False))

    target = int(rng.integers(lo, hi + 1))
    for _ in range(target):
        for _attempt in range(25):
            fig = _place(rng, _sample_figure(rng, rng.uniform(h_lo, h_hi) * h, style), h, w, margin=0.12)
            inside = _in_image(fig.kp, h, w)
            if inside.sum() < 10:
                continue
            mask = _figure_mask(fig, h, w)
            if _acceptable(occupied, fig, mask, h, w):
                occupied.append((fig, mask, True))
                break

    # Draw back to front, colouring each figure against the background where it stands.
    for fig, mask, _ in occupied:
        ys, xs = np.nonzero(mask)
        avoid = image[ys, xs].mean(0) if len(ys) else np.full(3, 127.0)
        _draw_figure(image, fig, _figure_colors(rng, avoid, style))
    if rng.uniform() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0, 5))
    image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    out: list[SyntheticPerson] = []
    cover = np.zeros((h, w), bool)  # union of the masks drawn after the current one
    for fig, mask, labelled in reversed(occupied):
        kp = np.zeros((17, 3))
        inside = _in_image(fig.kp, h, w)
        iy, ix = _pixels(fig.kp, h, w)
        v = np.where(inside, np.where(cover[iy, ix], 1, 2), 0)
        kp[:, :2] = np.where(inside[:, None], fig.kp, 0.0)
        kp[:, 2] = v
        out.append(SyntheticPerson(kp, mask, mask & ~cover, labelled, fig.facing))
        cover |= mask
    out.reverse()
    if crowd_mask is not None:
        crowd_mask = crowd_mask & ~cover
        if not crowd_mask.any():
            crowd_mask = None
    return SyntheticScene(image=image, background=background, people=out, crowd=crowd_mask)


def _acceptable(occupied, fig: _Figure, mask: np.ndarray, h: int, w: int) -> bool:
    """A new front figure may hide at most 40 % of an earlier labelled person's keypoints
    and of its visible pixels, and must not cover most of an earlier figure."""
    for i, (other, omask, labelled) in enumerate(occupied):
        later = np.zeros((h, w), bool)
        for _, m, _ in occupied[i + 1:]:
            later |= m
        vis_before = omask & ~later
        vis_after = vis_before & ~mask
        n_before = int(vis_before.sum())
        if n_before and vis_after.sum() < 0.6 * n_before:
            return False
        if labelled:
            inside = _in_image(other.kp, h, w)
            iy, ix = _pixels(other.kp, h, w)
            shown = inside & ~later[iy, ix]
            still = shown & ~mask[iy, ix]
            if still.sum() < 0.6 * shown.sum() or still.sum() < 6:
                return False
    return True


# ---------------------------------------------------------------------------------------------
# COCO annotations


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outline polygons of ``mask`` in pycocotools' convention: traced on a 2x nearest-upsampled
    mask and mapped back, so that ``annToMask`` rasterises them to exactly ``mask``."""
    h, w = mask.shape
    up = cv2.resize(mask.astype(np.uint8), (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) < 3:
            continue
        pts = c.reshape(-1, 2).astype(np.float64) / 2.0 + 0.25
        polys.append(np.round(pts.ravel(), 2).tolist())
    return polys


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with a run of zeros), the
    format of the official crowd annotations."""
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).astype(int).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _segmentation(mask: np.ndarray, style: str) -> tuple[list | dict, float]:
    """COCO segmentation of ``mask`` and its area. ``"polygon"``: outline polygons (COCO's form
    for single people; holes get filled); ``"rle"``: exact uncompressed RLE; ``"auto"``:
    polygons where they rasterise back to exactly ``mask``, RLE otherwise (holes, slivers)."""
    from pycocotools import mask as mask_utils

    h, w = mask.shape
    if style != "rle":
        polys = _polygons(mask)
        if polys:
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
            if style == "polygon" or np.array_equal(mask_utils.decode(rle).astype(bool), mask):
                return polys, float(mask_utils.area(rle))
    seg = _uncompressed_rle(mask)
    return seg, float(mask.sum())


def _mask_box(mask: np.ndarray, kp: np.ndarray | None = None) -> list[float]:
    """(x, y, w, h) of the mask's pixels (pycocotools' box convention: pixel ``j`` spans
    ``[j, j + 1]``), grown to whole pixels holding the labelled keypoints."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    if kp is not None and (kp[:, 2] > 0).any():
        lab = kp[kp[:, 2] > 0]
        x0, y0 = min(x0, math.floor(lab[:, 0].min())), min(y0, math.floor(lab[:, 1].min()))
        x1, y1 = max(x1, math.ceil(lab[:, 0].max())), max(y1, math.ceil(lab[:, 1].max()))
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _scene_annotations(
    scene: SyntheticScene, columns: list[int], image_id: int, next_id: int, seg_style: str
) -> list[dict]:
    k = len(columns)
    anns = []
    for p in scene.people:
        if not p.visible.any():
            continue
        seg, area = _segmentation(p.visible, seg_style)
        if p.labelled:
            kp = p.keypoints[columns]
            flat = [round(float(v), 2) for v in kp.ravel()]
            num = int((kp[:, 2] > 0).sum())
        else:
            kp, flat, num = None, [0] * (3 * k), 0
        anns.append({
            "id": next_id + len(anns), "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "num_keypoints": num, "keypoints": flat, "bbox": _mask_box(p.visible, kp),
            "area": round(area, 2), "segmentation": seg,
        })
    if scene.crowd is not None:
        seg = _uncompressed_rle(scene.crowd)  # crowd regions are RLE, as in COCO
        anns.append({
            "id": next_id + len(anns), "image_id": image_id, "category_id": 1, "iscrowd": 1,
            "num_keypoints": 0, "keypoints": [0] * (3 * k), "bbox": _mask_box(scene.crowd),
            "area": float(scene.crowd.sum()), "segmentation": seg,
        })
    return anns


def _columns(keypoint_set: KeypointSet) -> list[int]:
    """Columns of the COCO-17 model to write for ``keypoint_set`` (matched by keypoint name)."""
    missing = [n for n in keypoint_set.keypoints if n not in COCO17.keypoints]
    if missing:
        raise ValueError(
            f"keypoint_set: the synthetic figures have the COCO-17 keypoints only; "
            f"{keypoint_set.name!r} also needs {missing}"
        )
    return [COCO17.index(n) for n in keypoint_set.keypoints]


# ---------------------------------------------------------------------------------------------
# Dataset writer


def _check_args(num_train, num_val, image_size, people, seed, crowd_rate, unlabeled_rate, jpeg_quality):
    for name, n in (("num_train", num_train), ("num_val", num_val)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n < _MAX_IMAGES:
            raise ValueError(f"{name}: expected an integer in [0, {_MAX_IMAGES}), got {n!r}")
    if num_train + num_val == 0:
        raise ValueError("num_train + num_val: expected at least one image, got 0")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    for name, r in (("crowd_rate", crowd_rate), ("unlabeled_rate", unlabeled_rate)):
        if not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1], got {r!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality: expected 1..100, got {jpeg_quality!r}")
    return _check_scene_args(image_size, people)


def _check_scene_args(image_size, people) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        hh, ww = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size: expected (height, width), got {image_size!r}") from None
    if hh < 32 or ww < 32:
        raise ValueError(f"image_size: expected height and width >= 32, got {image_size!r}")
    try:
        lo, hi = (int(v) for v in people)
    except (TypeError, ValueError):
        raise ValueError(f"people: expected (min, max), got {people!r}") from None
    if not 0 <= lo <= hi or hi < 1 or hi > 20:
        raise ValueError(f"people: expected 0 <= min <= max, 1 <= max <= 20, got {people!r}")
    return (hh, ww), (lo, hi)


def _check_person_height(person_height) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in person_height)
    except (TypeError, ValueError):
        raise ValueError(
            f"person_height: expected (min, max) fractions of the image height, got {person_height!r}") from None
    if not 0.05 <= lo <= hi <= 1.5:
        raise ValueError(f"person_height: expected 0.05 <= min <= max <= 1.5, got {person_height!r}")
    return lo, hi


def _is_nonempty_dir(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path))


def generate_synthetic_coco(
    out_dir: str,
    num_train: int = 200,
    num_val: int = 40,
    image_size: tuple[int, int] = (192, 192),
    people: tuple[int, int] = (1, 4),
    seed: int = 0,
    keypoint_set: str | KeypointSet = "coco17",
    progress: bool = True,
    *,
    overwrite: bool = False,
    ignore_regions: bool = True,
    crowd_rate: float = 0.05,
    unlabeled_rate: float = 0.05,
    segmentation: str = "auto",
    jpeg_quality: int = 95,
    style: str = "stick",
    person_height: tuple[float, float] = (0.4, 0.95),
) -> dict:
    """Write a synthetic COCO-layout person-keypoint dataset (splits ``train`` and ``val``).

    Args:
        out_dir: dataset root to create; must be absent or empty unless ``overwrite``.
        num_train, num_val: images per split.
        image_size: ``(height, width)`` of every image.
        people: inclusive ``(min, max)`` labelled people per image.
        seed: the same seed gives byte-identical annotation files and identical images.
        keypoint_set: keypoints to write, matched by name against COCO-17 (COCO-17 itself or
            a subset of it in any order); its limbs become the category skeleton.
        progress: print progress lines to stderr.
        overwrite: replace a non-empty ``out_dir``.
        ignore_regions: allow crowd regions (``iscrowd = 1``) and persons annotated without
            keypoints, at ``crowd_rate`` / ``unlabeled_rate`` per image.
        segmentation: ``"auto"`` (polygons where they are exact, RLE for masks with holes),
            ``"polygon"`` (always polygons; holes filled) or ``"rle"`` (always exact RLE).
        jpeg_quality: JPEG quality of the written images.
        style: figure drawing style, ``"stick"`` or ``"clothed"`` (see :func:`render_scene`).
        person_height: range of the labelled figures' heights as fractions of the image height.

    Returns:
        summary: ``root``, ``image_size``, ``seed``, ``keypoint_set``, ``seconds``,
        ``images_per_second`` and per split (``splits[name]``) ``annotation_file``,
        ``image_dir``, ``images``, ``annotations``, ``people`` (with keypoints),
        ``unlabeled_people``, ``crowd_regions``, ``labelled_keypoints``, ``occluded_keypoints``.
    """
    size, people = _check_args(num_train, num_val, image_size, people, seed, crowd_rate, unlabeled_rate, jpeg_quality)
    if style not in STYLES:
        raise ValueError(f"style: expected one of {STYLES}, got {style!r}")
    person_height = _check_person_height(person_height)
    if segmentation not in ("auto", "polygon", "rle"):
        raise ValueError(f"segmentation: expected 'auto', 'polygon' or 'rle', got {segmentation!r}")
    kset = get_keypoint_set(keypoint_set)
    columns = _columns(kset)
    root = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"out_dir: {root} exists and is not a directory")
    if _is_nonempty_dir(root) and not overwrite:
        raise ValueError(f"out_dir: {root} is not empty; pass overwrite=True to replace it")
    if not ignore_regions:
        crowd_rate = unlabeled_rate = 0.0

    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    start = time.perf_counter()
    try:
        splits = {}
        for split, count in (("train", num_train), ("val", num_val)):
            scene_kw = dict(people=people, crowd_rate=float(crowd_rate), unlabeled_rate=float(unlabeled_rate),
                            style=style, person_height=person_height)
            splits[split] = _write_split(
                tmp, split, count, size, int(seed), kset, columns, scene_kw, segmentation, int(jpeg_quality), progress,
            )
        _swap_into_place(tmp, root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    for info in splits.values():  # paths inside the final root, not the temporary one
        info["annotation_file"] = os.path.join(root, "annotations", f"person_keypoints_{info['split']}.json")
        info["image_dir"] = os.path.join(root, info["split"])
    total = num_train + num_val
    return {
        "root": root,
        "image_size": list(size),
        "seed": int(seed),
        "keypoint_set": kset.name,
        "seconds": seconds,
        "images_per_second": total / seconds if seconds > 0 else float("inf"),
        "splits": splits,
    }


def _write_split(tmp, split, count, size, seed, kset, columns, scene_kw: dict, seg_style, quality, progress):
    h, w = size
    os.makedirs(os.path.join(tmp, split))
    os.makedirs(os.path.join(tmp, "annotations"), exist_ok=True)
    images, anns = [], []
    stats = {"people": 0, "unlabeled_people": 0, "crowd_regions": 0, "labelled_keypoints": 0, "occluded_keypoints": 0}
    offset = _SPLIT_ID_OFFSET[split]
    step = max(1, count // 10)
    t0 = time.perf_counter()
    for i in range(count):
        scene = render_scene(scene_rng(seed, split, i), size, **scene_kw)
        image_id = offset + i + 1
        file_name = f"{image_id:012d}.jpg"
        path = os.path.join(tmp, split, file_name)
        if not cv2.imwrite(path, scene.image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"could not write image {path}")
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        new = _scene_annotations(scene, columns, image_id, offset + len(anns) + 1, seg_style)
        anns += new
        for a in new:
            v = np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2]
            if a["iscrowd"]:
                stats["crowd_regions"] += 1
            elif a["num_keypoints"] == 0:
                stats["unlabeled_people"] += 1
            else:
                stats["people"] += 1
            stats["labelled_keypoints"] += int((v > 0).sum())
            stats["occluded_keypoints"] += int((v == 1).sum())
        if progress and ((i + 1) % step == 0 or i + 1 == count):
            rate = (i + 1) / max(time.perf_counter() - t0, 1e-9)
            print(f"synthetic {split}: {i + 1}/{count} images ({rate:.0f} img/s)", file=sys.stderr, flush=True)
    coco = {
        "info": {"description": "kerapose synthetic person keypoints", "version": "1.0", "seed": seed, "split": split},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{
            "id": 1, "name": "person", "supercategory": "person",
            "keypoints": list(kset.keypoints),
            "skeleton": [[a + 1, b + 1] for a, b in kset.limbs],
        }],
    }
    ann_file = os.path.join(tmp, "annotations", f"person_keypoints_{split}.json")
    with open(ann_file, "w") as f:
        f.write(json.dumps(coco, separators=(",", ":")))  # dumps: the C encoder, much faster than dump
    return {"split": split, "images": count, "annotations": len(anns), **stats}


def _swap_into_place(tmp: str, root: str, overwrite: bool) -> None:
    """Rename the finished temporary tree to ``root``; an old tree is moved aside first and
    deleted only once the new one is in place."""
    if os.path.isdir(root):
        if not os.listdir(root):
            os.rmdir(root)
        elif not overwrite:  # filled while we were generating
            raise ValueError(f"out_dir: {root} is not empty; pass overwrite=True to replace it")
        else:
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.old-", dir=os.path.dirname(root))
            os.replace(root, os.path.join(trash, "old"))
            os.replace(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
            return
    os.replace(tmp, root)
