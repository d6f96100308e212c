"""Rendering one defect-free ball-screw photograph (the `synthetic` dataset's surfaces).

The renderer imitates the BSData photographs (a threaded spindle filling the frame, its axis
vertical, thread lands running almost horizontally across the image): a helical thread profile
wrapped on a cylinder, shaded as polished steel reflecting a few soft lights, with machining
marks along the thread. Every image is a pure function of the generator it is given.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

# Samples of one thread period in the profile look-up table.
PROFILE_SAMPLES = 512


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
    crown = rng.uniform(0.04, 0.08) * land  # land bulge; its slope shades the band's gradient
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

    Rows index the position across the thread (one per pixel), columns the angle around the
    spindle. A sparse envelope makes a few rows into deeper scratches.

    Returns: (n_across, n_along) float, about unit variance.
    """
    fine = ndimage.gaussian_filter(rng.standard_normal((n_across, n_along)), (0.7, n_along / 6), mode="wrap")
    envelope = 0.6 + 2.0 * (rng.random((n_across, 1)) < 0.02)
    out = fine * envelope
    return out / (out.std() + 1e-8)


def render_surface(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Render one defect-free ball-screw photograph.

    Geometry: a cylinder (axis vertical, filling nearly the whole width, background at the
    sides) carries a helical thread; a point at angle theta around the axis projects to
    x = xc + R sin(theta), and the thread phase there is u = (y + pitch * theta / 2pi
    + bow * cos(theta) + tilt * (x - xc)) / pitch, which gives the tilt and curvature of real
    threads and their steepening at the silhouette. Shading (Phong-like, for a mirror): the
    normal (cylinder normal tilted by the thread slope and by machining marks) reflects the
    direction to a near camera; the reflected direction looks up an environment of soft light
    lobes and brighter and darker sectors, with a dark patch where it sees the camera itself
    (as on the lands in BSData). A weak diffuse term, a slow illumination gradient, a soft
    highlight shoulder, a steel-to-brass tint and sensor noise follow. About 25 ms for 200x500.

    Returns: (height, width, 3) uint8 RGB.
    """
    h, w = int(height), int(width)
    g = _geometry(rng, h, w)
    mark = _machining_marks(rng, g, h, w)
    normal, reflected, vy = _mirror(rng, g, mark, h)
    env = _environment(rng, reflected, vy)
    shade = _shading(rng, g, normal, env, mark, h, w)
    lum = _silhouette(rng, g, shade, h, w)
    return _expose(rng, lum)


class _Geometry(NamedTuple):
    """Where each pixel of an (H, W) image lies on the threaded cylinder."""

    y: np.ndarray  # (H, 1) row
    x: np.ndarray  # (1, W) column
    radius: float  # px
    xc: float  # px, the axis's column
    s: np.ndarray  # (1, W) sin(theta), theta the angle around the axis
    theta: np.ndarray  # (1, W)
    cos_t: np.ndarray  # (1, W)
    pitch: float  # px
    across: np.ndarray  # (H, W) px across the thread
    relief: np.ndarray  # (H, W) in periods: > 0 on the lands, < 0 in the groove
    slope: np.ndarray  # (H, W) d relief / d u


def _geometry(rng: np.random.Generator, h: int, w: int) -> _Geometry:
    """Cylinder and thread geometry: a helix of random pitch, bow, hand and tilt, and its profile."""
    y = np.arange(h, dtype=np.float64)[:, None]  # (H, 1)
    x = np.arange(w, dtype=np.float64)[None, :]  # (1, W)
    radius = w * rng.uniform(0.47, 0.51)
    xc = w / 2 + rng.uniform(-0.02, 0.02) * w
    s = np.clip((x - xc) / radius, -0.999, 0.999)  # (1, W) sin(theta)
    theta = np.arcsin(s)
    cos_t = np.sqrt(1.0 - s * s)
    pitch = h * rng.uniform(0.26, 0.4)
    bow = rng.uniform(0.0, 0.6) * pitch  # px; > 0: the camera looks a little from above
    hand = rng.choice([-1.0, 1.0], p=[0.2, 0.8])
    tilt = hand * rng.uniform(0.0, 0.08)  # perspective and camera roll
    across = y + hand * pitch * theta / (2 * np.pi) + bow * cos_t + tilt * (x - xc)  # (H, W) px
    u = across / pitch + rng.random()
    profile_h, profile_slope = _thread_profile(rng)
    idx = (np.mod(u, 1.0) * PROFILE_SAMPLES).astype(np.int64) % PROFILE_SAMPLES
    relief = profile_h[idx]  # (H, W) in periods: > 0 on the lands, < 0 in the groove
    slope = profile_slope[idx]  # (H, W) d relief / d u
    return _Geometry(y, x, radius, xc, s, theta, cos_t, pitch, across, relief, slope)


def _machining_marks(rng: np.random.Generator, g: _Geometry, h: int, w: int) -> np.ndarray:
    """Machining marks, following the thread; they bend the normal and vary the albedo.

    One texture row per pixel across the thread, interpolated so a scratch stays unbroken.
    Returns: (H, W) float.
    """
    n_along = 48
    marks = _streaks(rng, n_across=int(h + 2 * g.pitch + w) + 2, n_along=n_along)
    row = np.floor(g.across)
    frac = g.across - row
    mi = row.astype(np.int64) % (marks.shape[0] - 1)
    mj = np.broadcast_to(((g.theta + np.pi / 2) / np.pi * (n_along - 1)).astype(np.int64), mi.shape)
    return marks[mi, mj] * (1.0 - frac) + marks[mi + 1, mj] * frac  # (H, W)


Vector = tuple[np.ndarray, np.ndarray, np.ndarray]  # (x, y, z) components, each (H, W)


def _mirror(rng: np.random.Generator, g: _Geometry, mark: np.ndarray, h: int) -> tuple[Vector, Vector, np.ndarray]:
    """(the surface normal n, the direction v to a near camera mirrored about n, v's y (H, 1)).

    The normal is the cylinder normal (sin, 0, cos) tilted along y by the profile slope and the
    marks; v turns with the image row.
    """
    ny = -g.slope + 0.015 * mark
    nx = np.broadcast_to(g.s, ny.shape)
    nz = np.broadcast_to(g.cos_t, ny.shape)
    norm = np.sqrt(nx * nx + ny * ny + nz * nz)
    nx, ny, nz = nx / norm, ny / norm, nz / norm
    cam_row, focal = rng.uniform(0.3, 1.0) * h, rng.uniform(1.2, 2.5) * h
    vy = (cam_row - g.y) / focal  # (H, 1)
    vz = 1.0 / np.sqrt(1.0 + vy * vy)
    vy = vy * vz
    n_dot_v = ny * vy + nz * vz
    rx, ry, rz = 2 * n_dot_v * nx, 2 * n_dot_v * ny - vy, 2 * n_dot_v * nz - vz
    return (nx, ny, nz), (rx, ry, rz), vy


def _environment(rng: np.random.Generator, reflected: Vector, vy: np.ndarray) -> np.ndarray:
    """The light the mirror sees along each reflected direction: (H, W) float.

    Soft lights as von Mises-Fisher lobes over reflected directions: a broad one in front (lights
    the lands), two grazing ones behind left and right (the bright bands near the silhouette),
    and one overhead.
    """
    rx, ry, rz = reflected
    lights = [
        ([rng.uniform(-0.3, 0.3), rng.uniform(-0.35, -0.05), 1.0], rng.uniform(0.55, 0.75), 0.4),
        ([-1.0, rng.uniform(-0.2, 0.1), -rng.uniform(0.25, 0.6)], rng.uniform(0.6, 0.95), 0.22),
        ([1.0, rng.uniform(-0.2, 0.1), -rng.uniform(0.25, 0.6)], rng.uniform(0.5, 1.0), 0.22),
        ([rng.uniform(-0.5, 0.5), -1.0, rng.uniform(0.0, 0.4)], rng.uniform(0.2, 0.4), 0.3),
    ]
    env = np.full(ry.shape, rng.uniform(0.1, 0.16))
    for direction, power, spread in lights:
        d = _normalize(np.array(direction))
        env += power * np.exp((rx * d[0] + ry * d[1] + rz * d[2] - 1.0) / spread**2)
    # The rest of the room: brighter and darker sectors around the spindle, which the mirror
    # turns into vertical bands running through every land.
    room = ndimage.gaussian_filter1d(rng.random(40), 2.5, mode="nearest")
    room = (room - room.min()) / (room.max() - room.min() + 1e-8)
    env *= rng.uniform(0.25, 0.45) + rng.uniform(0.6, 0.9) * np.interp(rx, np.linspace(-2, 2, room.size), room)
    # The camera seen in the mirror (where r comes back along v): a dark patch with steep
    # sides on the lands of the rows facing it, missing the steep grooves.
    camera = np.exp(-((rx / rng.uniform(0.12, 0.18)) ** 4) - ((ry - vy) / rng.uniform(0.12, 0.2)) ** 2)
    env *= 1.0 - rng.uniform(0.45, 0.7) * camera
    return env


def _shading(
    rng: np.random.Generator, g: _Geometry, normal: Vector, env: np.ndarray, mark: np.ndarray, h: int, w: int
) -> np.ndarray:
    """Mirror light plus a weak diffuse term, times albedo, specks and a slow illumination
    gradient across the frame: (H, W) float."""
    nx, ny, nz = normal
    diffuse_dir = _normalize(np.array([rng.uniform(-0.5, 0.5), -0.4, 1.0]))
    diffuse = np.clip(nx * diffuse_dir[0] + ny * diffuse_dir[1] + nz * diffuse_dir[2], 0.0, 1.0)
    albedo = 1.0 + 0.05 * mark + 1.5 * np.minimum(g.relief, 0.0)  # less light reaches the groove
    shade = (0.95 * env + 0.25 * diffuse) * albedo

    shade *= _speckle(rng, shade.shape)
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    shade *= rng.uniform(0.9, 1.1) + gx * (g.x / w - 0.5) + gy * (g.y / h - 0.5)
    return shade


def _silhouette(rng: np.random.Generator, g: _Geometry, shade: np.ndarray, h: int, w: int) -> np.ndarray:
    """The spindle on its background, the thread profile scalloping the silhouette edge, slightly
    blurred: (H, W) luminance."""
    edge = g.radius - np.abs(g.x - g.xc) + 1.5 * g.pitch * g.relief  # (H, W) px inside the silhouette
    inside = np.clip(edge / 2.0 + 0.5, 0.0, 1.0)
    rim_dark = 1.0 - 0.7 * np.exp(-np.clip(edge, 0, None) / (0.01 * w))
    background = rng.uniform(0.5, 0.72) * (1.0 - 0.25 * (g.y / h))
    lum = inside * shade * rim_dark + (1.0 - inside) * background
    return ndimage.gaussian_filter(lum, sigma=0.7)


def _expose(rng: np.random.Generator, lum: np.ndarray) -> np.ndarray:
    """Exposure with a soft shoulder (highlights roll off instead of clipping), then the tint
    (highlights stay near white, mid-tones take a steel-to-brass colour) and sensor noise.

    Returns: (H, W, 3) uint8 RGB.
    """
    lum = rng.uniform(1.05, 1.35) * lum + 0.03
    lum = lum / (1.0 + lum**4) ** 0.25
    warmth = rng.uniform(0.0, 1.0) ** 0.5  # most BSData spindles look brass-warm, a few grey
    gammas = np.array([1.0 - 0.2 * warmth, 1.0, 1.0 + 0.5 * warmth])
    rgb = np.clip(lum, 0.0, 1.0)[..., None] ** (gammas + rng.uniform(-0.03, 0.03, size=3))  # (H, W, 3)
    rgb = rgb * 255.0 + rng.normal(0.0, 2.0, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Dirt and tiny dents that defect-free BSData images carry too: a few faint dark specks.

    Returns: (H, W) float multiplicative factor in (0, 1].
    """
    h, w = shape
    dots = np.zeros(shape)
    n = rng.poisson(8)
    dots[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.uniform(1.5, 4.0, n)
    return 1.0 - np.clip(ndimage.gaussian_filter(dots, 0.8), 0.0, 0.5)
