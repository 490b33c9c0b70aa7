"""A picture a clinician checks in seconds: coronal and sagittal bone MIPs along the spine, every label on it.

Each panel is a slab maximum intensity projection (MIP) that follows the spine: the slab's centre
is the curve through the labelled centroids (interpolated in S-I), so a curved spine stays in it
and ribs, pelvis or table in front or behind do not hide it. Panels are sampled on an LPS-aligned
grid at the scan's finest voxel spacing (nearest voxel), rows running superior to inferior; the
coronal panel shows the patient's right on the viewer's left (radiological convention), the
sagittal one anterior on the left. Labels stand in a column beside the spine (on the patient's right
in the coronal panel, in front of it in the sagittal one), pushed apart so none overlap, with a
leader line to their point; those that need review are orange with "?".
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .pipeline import Result
from .volume import Volume

BONE_WINDOW_HU = (-200.0, 1300.0)  # black to white: soft tissue grey, cortical bone white
CORONAL_SLAB_HALF_MM = 15.0  # about half a vertebral body's depth, either side of the centroids
SAGITTAL_SLAB_HALF_MM = 12.0  # the body, the canal and the spinous processes, not the ribs' heads
MAX_PANEL_PX = 1024  # the longest panel side: a bigger scan is sampled more coarsely
MIN_PANEL_HEIGHT_PX = 640  # a smaller scan is enlarged, so 24 labels fit beside it
SCALE_BAR_MM = (10.0, 20.0, 50.0, 100.0)  # the longest that fits a quarter of the panel is drawn
MARGIN_PX = 16
LABEL_OFFSET_PX = 48  # from the spine's outermost point to the label column
TRUSTED = (80, 220, 80)
REVIEW = (255, 150, 0)
TEXT = (235, 235, 235)


def spine_curve(result: Result, volume: Volume, z_mm: np.ndarray) -> np.ndarray:
    """(len(z_mm), 3) LPS mm: the centroids' curve at heights `z_mm`, held constant beyond the end ones;
    the volume's centre without vertebrae."""
    points = np.array([v.world_lps_mm for v in result.vertebrae]).reshape(-1, 3)
    if not len(points):
        points = volume.center_world[None, :]
    points = points[np.argsort(points[:, 2])]
    return np.stack([np.interp(z_mm, points[:, 2], points[:, a]) for a in range(3)], axis=-1)


def slab_mip(
    volume: Volume, z_mm: np.ndarray, across_mm: np.ndarray, across_axis: int, centre: np.ndarray, half_mm: float
) -> np.ndarray:
    """(len(z_mm), len(across_mm)) HU: the maximum over a slab along the third LPS axis.

    Pixel (r, c) is at height z_mm[r] and LPS coordinate across_mm[c] on axis `across_axis`
    (0 = x, 1 = y); the slab spans centre[r] +- half_mm on the other of x and y, where `centre`
    (len(z_mm), 3) is LPS mm. Outside the scan counts as air.
    """
    depth_axis = 1 - across_axis
    step = float(volume.spacing.min())
    world = np.empty((len(z_mm), len(across_mm), 3))
    world[..., 2] = z_mm[:, None]
    world[..., across_axis] = across_mm[None, :]
    best = np.full(world.shape[:2], -1024.0, np.float32)
    for t in np.arange(-half_mm, half_mm + step / 2, step):
        world[..., depth_axis] = centre[:, depth_axis, None] + t
        np.maximum(best, volume.hu_nearest(world, -1024.0)[0], out=best)
    return best


def spread(rows: np.ndarray, gap: float, height: float) -> np.ndarray:
    """Label rows (pixels) as close to `rows` as possible, at least `gap` apart, within [gap/2, height - gap/2].

    The labels keep their order: pushed down past their upper neighbours, then up from the bottom
    edge. More labels than `height / gap` overflow the bottom.
    """
    order = np.argsort(rows)
    placed = np.asarray(rows, float)[order]
    if len(placed):
        placed[0] = max(placed[0], gap / 2)
    for n in range(1, len(placed)):
        placed[n] = max(placed[n], placed[n - 1] + gap)
    if len(placed):
        placed[-1] = min(placed[-1], height - gap / 2)
    for n in range(len(placed) - 2, -1, -1):
        placed[n] = min(placed[n], placed[n + 1] - gap)
    if len(placed) and placed[0] < gap / 2:  # more than fit: evenly from the top
        placed = gap / 2 + gap * np.arange(len(placed))
    out = np.empty_like(placed)
    out[order] = placed
    return out


def _grey(hu: np.ndarray) -> np.ndarray:
    """HU in the bone window as 8-bit grey."""
    lo, hi = BONE_WINDOW_HU
    return np.clip((hu - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def overview(result: Result, volume: Volume, title: str) -> np.ndarray:
    """The overview picture (H, W, 3) uint8: title, coronal and sagittal slab MIPs with labels,
    orientation letters and a scale bar each."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in volume.shape_ijk], indexing="ij")).reshape(3, -1).T
    world = volume.index_to_world(corners)
    lo, hi = world.min(0), world.max(0)
    px_mm = max(float(volume.spacing.min()), float((hi - lo).max()) / MAX_PANEL_PX)
    z = np.arange(hi[2], lo[2] - px_mm / 2, -px_mm)  # row 0 superior
    x, y = (np.arange(lo[a], hi[a] + px_mm / 2, px_mm) for a in (0, 1))  # R -> L, A -> P
    centre = spine_curve(result, volume, z)
    panels = [
        slab_mip(volume, z, x, 0, centre, CORONAL_SLAB_HALF_MM),
        slab_mip(volume, z, y, 1, centre, SAGITTAL_SLAB_HALF_MM),
    ]
    zoom = max(1.0, MIN_PANEL_HEIGHT_PX / len(z))
    images = [
        Image.fromarray(_grey(p)).resize((round(p.shape[1] * zoom), round(p.shape[0] * zoom)), Image.Resampling.BILINEAR)
        for p in panels
    ]
    mm_px = px_mm / zoom  # mm per picture pixel
    height = images[0].height
    font_px = max(14, height // 55)
    font, small = _font(font_px), _font(max(12, font_px * 3 // 4))
    header = 2 * font_px + 16
    widths = [MARGIN_PX, images[0].width, MARGIN_PX, images[1].width, MARGIN_PX]
    left = np.cumsum([0, *widths])
    canvas = Image.new("RGB", (int(left[-1]), height + header), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), title, fill=TEXT, font=font)
    draw.text((8, 8 + font_px), "coronal and sagittal bone MIP along the spine", fill=TEXT, font=small)
    legend = "green: label trusted    orange ?: needs review"
    draw.text((canvas.width - 8, 8 + font_px), legend, fill=REVIEW, font=small, anchor="ra")

    points = np.array([v.world_lps_mm for v in result.vertebrae]).reshape(-1, 3)
    rows = (hi[2] - points[:, 2]) / mm_px
    for panel, image, axis, origin, letters in ((0, images[0], 0, lo[0], ("R", "L")), (1, images[1], 1, lo[1], ("A", "P"))):
        x0 = int(left[1 + 2 * panel])
        canvas.paste(image, (x0, header))
        cols = x0 + (points[:, axis] - origin) / mm_px
        label_rows = header + spread(rows, font_px * 1.25, height)
        edge = max(x0 + 3 * font_px, cols.min() - LABEL_OFFSET_PX) if len(cols) else x0
        for v, c, r, lr in zip(result.vertebrae, cols, header + rows, label_rows):
            colour = REVIEW if v.needs_review else TRUSTED
            draw.line([(c, r), (edge, lr)], fill=colour, width=1)
            draw.ellipse([c - 3, r - 3, c + 3, r + 3], outline=colour, width=2)
            text = v.name + ("?" if v.needs_review else "")
            draw.text((edge - 3, lr), text, fill=colour, font=font, anchor="rm", stroke_width=2, stroke_fill=(0, 0, 0))
        _orientation(draw, x0, header, image.size, letters, small)
        _scale_bar(draw, x0, header + height, image.width, mm_px, small)
    return np.asarray(canvas)


def _orientation(
    draw: ImageDraw.ImageDraw, x0: int, y0: int, size: tuple[int, int], letters: tuple[str, str], font
) -> None:
    """Orientation letters at the panel's edges: `letters` left and right, S top and I bottom."""
    w, h = size
    for text, xy, anchor in (
        (letters[0], (x0 + 4, y0 + h / 2), "lm"),
        (letters[1], (x0 + w - 4, y0 + h / 2), "rm"),
        ("S", (x0 + w / 2, y0 + 4), "mt"),
        ("I", (x0 + w / 2, y0 + h - 4), "mb"),
    ):
        draw.text(xy, text, fill=(255, 255, 0), font=font, anchor=anchor)


def _scale_bar(draw: ImageDraw.ImageDraw, x0: int, bottom: int, width: int, mm_px: float, font) -> None:
    """The longest of `SCALE_BAR_MM` that fits a quarter of the panel, at its bottom left."""
    fitting = [mm for mm in SCALE_BAR_MM if mm / mm_px <= width / 4] or [SCALE_BAR_MM[0]]
    length = fitting[-1] / mm_px
    y = bottom - 24
    draw.line([(x0 + 10, y), (x0 + 10 + length, y)], fill=(255, 255, 255), width=3)
    draw.text((x0 + 10, y - 4), f"{fitting[-1]:g} mm", fill=(255, 255, 255), font=font, anchor="lb")
