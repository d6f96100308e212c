"""The built-in `synthetic` dataset: procedural ball-screw photographs with pitting.

It lets the demo train and evaluate with no download. The renderer imitates the BSData
photographs (a threaded spindle filling the frame, its axis vertical, thread lands running
almost horizontally across the image): a helical thread profile wrapped on a cylinder, shaded
as polished steel reflecting a few soft lights, with machining marks along the thread.
Pitting is added as small dark, ragged cavities, preferably on the thread flanks.

Every image is a pure function of (seed, index): the dataset never touches the global RNG.
"""

from __future__ import annotations

import collections.abc
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pitscope.config import DataConfig
from pitscope.data.types import Sample

# Samples of one thread period in the profile look-up table.
PROFILE_SAMPLES = 512
# Split names and the stream that keeps their seeds apart.
SPLIT_STREAMS = {"train": 0, "test": 1}


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _thread_profile(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One period of a ball-screw thread in axial section, as (height, slope) tables.

    A broad, gently convex land (the wide bright band of the photographs) is followed by a
    narrow, steep groove that reflects little light (the dark line between bands). Height is
    in units of the period; the slope (d height / d u) is what bends the surface normal. The
    table is blurred a little, as the optics blur edges.

    Returns: two (PROFILE_SAMPLES,) float arrays over u in [0, 1).
    """
    u = np.arange(PROFILE_SAMPLES) / PROFILE_SAMPLES
    land = rng.uniform(0.6, 0.75)
    crown = rng.uniform(0.03, 0.06) * land  # land bulge; its slope shades the band's gradient
    crest = rng.uniform(0.3, 0.7)  # where along the land the bulge peaks
    depth = rng.uniform(0.1, 0.18)
    t_land = u / land
    bulge = np.where(t_land < crest, t_land / crest, (1.0 - t_land) / (1.0 - crest))
    t = np.clip((u - land) / (1.0 - land), 0.0, 1.0)  # 0..1 across the groove
    groove = np.sqrt(np.clip(1.0 - (2.0 * t - 1.0) ** 2, 0.0, 1.0))
    height = np.where(u < land, crown * np.sqrt(np.clip(bulge * (2.0 - bulge), 0.0, 1.0)), -depth * groove)
    height = ndimage.gaussian_filter1d(height, sigma=PROFILE_SAMPLES * 0.008, mode="wrap")
    slope = np.gradient(np.concatenate([height[-1:], height, height[:1]]))[1:-1] * PROFILE_SAMPLES
    return height, slope


def _streaks(rng: np.random.Generator, n_across: int, n_along: int) -> np.ndarray:
    """Machining marks: noise that is fine across the thread and long along it.

    Rows index the position across the thread (sub-pixel steps), columns the angle around the
    spindle. A sparse envelope makes a few rows into deeper scratches.

    Returns: (n_across, n_along) float, about unit variance.
    """
    fine = ndimage.gaussian_filter(rng.standard_normal((n_across, n_along)), (0.8, n_along / 12), mode="wrap")
    envelope = 0.5 + 3.0 * (rng.random((n_across, 1)) < 0.03)
    out = fine * envelope
    return out / (out.std() + 1e-8)


def render_surface(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Render one defect-free ball-screw photograph.

    Geometry: a cylinder (axis vertical, filling nearly the whole width, background at the
    sides) carries a helical thread; a point at angle theta around the axis projects to
    x = xc + R sin(theta), and the thread phase there is u = (y + pitch * theta / 2pi
    - bow * R cos(theta)) / pitch, which gives the slight tilt and curvature of real threads
    and their steepening at the silhouette. Shading: the normal (cylinder normal tilted by the
    thread slope and by machining marks) reflects the view ray; the reflected direction looks
    up an environment of soft lights, with a dark spot where it sees the camera itself (the
    dark patch on the lands in BSData). A weak diffuse term, a slow illumination gradient,
    a steel-to-brass tint and sensor noise follow.

    Returns: (height, width, 3) uint8 RGB.
    """
    h, w = int(height), int(width)
    y = np.arange(h, dtype=np.float64)[:, None]  # (H, 1)
    x = np.arange(w, dtype=np.float64)[None, :]  # (1, W)

    # Cylinder and thread geometry.
    radius = w * rng.uniform(0.46, 0.5)
    xc = w / 2 + rng.uniform(-0.02, 0.02) * w
    s = np.clip((x - xc) / radius, -0.999, 0.999)  # (1, W) sin(theta)
    theta = np.arcsin(s)
    cos_t = np.sqrt(1.0 - s * s)
    pitch = h * rng.uniform(0.18, 0.3)
    bow = rng.uniform(-0.04, 0.04)
    tilt = rng.uniform(-0.04, 0.04)  # a slight extra roll of the camera
    hand = rng.choice([-1.0, 1.0], p=[0.25, 0.75])
    across = y + hand * pitch * theta / (2 * np.pi) - bow * radius * cos_t + tilt * (x - xc)  # (H, W) px
    u = across / pitch + rng.random()
    profile_h, profile_slope = _thread_profile(rng)
    idx = (np.mod(u, 1.0) * PROFILE_SAMPLES).astype(np.int64) % PROFILE_SAMPLES
    groove = profile_h[idx]  # (H, W), <= 0
    slope = profile_slope[idx]  # (H, W), d height / d u (height in periods)

    # Machining marks bend the normal and vary the albedo, following the thread.
    sub = 2  # streak rows per pixel across the thread
    marks = _streaks(rng, n_across=int(sub * (h + 2 * pitch + w)) + 1, n_along=64)
    mi = (np.round(across * sub).astype(np.int64)) % marks.shape[0]
    mj = ((theta + np.pi / 2) / np.pi * 63).astype(np.int64)
    mark = marks[mi, mj]  # (H, W)

    # Surface normal: cylinder normal (sin, 0, cos) tilted along y by the profile slope.
    ny = -slope * rng.uniform(0.9, 1.4) + 0.06 * mark
    nx = np.broadcast_to(s, ny.shape)
    nz = np.broadcast_to(cos_t, ny.shape)
    norm = np.sqrt(nx * nx + ny * ny + nz * nz)
    nx, ny, nz = nx / norm, ny / norm, nz / norm
    # Mirror the view ray (0, 0, 1) about the normal.
    rx, ry, rz = 2 * nz * nx, 2 * nz * ny, 2 * nz * nz - 1

    # Environment: soft lights as von Mises-Fisher lobes over reflected directions.
    env = np.full(ny.shape, rng.uniform(0.12, 0.2))
    lights = [
        (_normalize(np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.6, -0.2), 1.0])), rng.uniform(0.5, 0.7), 0.55),
        (_normalize(np.array([-rng.uniform(0.7, 1.0), rng.uniform(-0.3, 0.1), -rng.uniform(0.2, 0.6)])), rng.uniform(0.7, 1.0), 0.25),
        (_normalize(np.array([rng.uniform(0.7, 1.0), rng.uniform(-0.3, 0.1), -rng.uniform(0.2, 0.6)])), rng.uniform(0.5, 1.0), 0.25),
        (_normalize(np.array([rng.uniform(-0.5, 0.5), -1.0, rng.uniform(0.0, 0.5)])), rng.uniform(0.3, 0.6), 0.35),
    ]
    for direction, power, spread in lights:
        cos_angle = rx * direction[0] + ry * direction[1] + rz * direction[2]
        env += power * np.exp((cos_angle - 1.0) / spread**2)
    camera = np.exp((rz - 1.0) / 0.004)  # the dark camera aperture seen in the lands
    env *= 1.0 - rng.uniform(0.5, 0.75) * camera

    diffuse_dir = _normalize(np.array([rng.uniform(-0.5, 0.5), -0.5, 1.0]))
    diffuse = np.clip(nx * diffuse_dir[0] + ny * diffuse_dir[1] + nz * diffuse_dir[2], 0.0, 1.0)
    albedo = 1.0 + 0.06 * mark + 0.25 * groove  # deeper groove: less light reaches it
    shade = (0.7 * env + 0.25 * diffuse) * albedo

    # Slow illumination gradient across the frame.
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    shade *= 1.0 + gx * (x / w - 0.5) + gy * (y / h - 0.5)

    # Background beside the silhouette; the thread profile scallops the silhouette edge.
    edge = radius * (1.0 + 0.35 * groove) - np.abs(x - xc)  # (H, W) px inside the silhouette
    inside = np.clip(edge / 2.0 + 0.5, 0.0, 1.0)
    rim_dark = 1.0 - 0.6 * np.exp(-np.clip(edge, 0, None) / (0.012 * w))
    background = rng.uniform(0.45, 0.7) * (1.0 - 0.3 * (y / h))
    lum = inside * shade * rim_dark + (1.0 - inside) * background
    lum = ndimage.gaussian_filter(lum, sigma=0.7)

    # Tint: highlights stay near white, mid-tones take a steel-to-brass colour.
    warmth = rng.uniform(0.0, 1.0)
    gammas = np.array([1.0, 1.0 + 0.12 * warmth, 1.0 + 0.6 * warmth]) + rng.uniform(-0.04, 0.04, size=3)
    rgb = np.clip(lum, 0.0, 1.0)[..., None] ** gammas  # (H, W, 3)
    rgb = rgb * 255.0 + rng.normal(0.0, 2.0, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)
