"""Clicks on the photo -> SAM prompts (point groups and boxes, as the ``masks`` command writes them), and the
photo with those prompts drawn on it."""

from __future__ import annotations

from PIL import Image, ImageDraw

from ..errors import SceneError

CLICK_MODES = ("new concept", "add to last concept (+)", "exclude from last concept (-)", "box corner")


def add_click(points: str | None, boxes: str | None, x: int, y: int, mode: str) -> tuple[str, str]:
    """A click on the photo -> the SAM prompts, as the text the ``masks`` command takes (one mask per line).

    ``new concept`` starts a point group ``x,y``; ``add to last`` / ``exclude from last`` append ``+x,y`` /
    ``-x,y`` to the last group; ``box corner`` starts a box ``x,y`` and the next corner click completes it as
    ``x0,y0,x1,y1`` (corners in any order).

    Returns:
        ``(points, boxes)``: the updated texts.
    """
    point_lines = [line for line in str(points or "").splitlines() if line.strip()]
    box_lines = [line for line in str(boxes or "").splitlines() if line.strip()]
    x, y = int(x), int(y)
    if mode == "box corner":
        if box_lines and box_lines[-1].count(",") == 1:  # a first corner waits for the second
            x0, y0 = (int(v) for v in box_lines[-1].split(","))
            box_lines[-1] = f"{min(x0, x)},{min(y0, y)},{max(x0, x)},{max(y0, y)}"
        else:
            box_lines.append(f"{x},{y}")
    elif mode in CLICK_MODES[1:3] and point_lines:
        sign = "+" if mode == CLICK_MODES[1] else "-"
        point_lines[-1] = f"{point_lines[-1]}{sign}{x},{y}"
    else:  # a new concept (also the first click, whatever the mode)
        point_lines.append(f"{x},{y}")
    return "\n".join(point_lines), "\n".join(box_lines)


def draw_prompts(photo: Image.Image, points: str | None, boxes: str | None) -> Image.Image:
    """The photo with the clicked points (green on, red off, numbered by concept) and boxes drawn on it."""
    from ..segmentation.prompts import parse_box, parse_point_group

    image = photo.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    r = max(3, min(image.size) // 100)
    for k, line in enumerate(line for line in str(points or "").splitlines() if line.strip()):
        try:
            group = parse_point_group(line)
        except SceneError:
            continue  # half-typed text: draw what parses
        for x, y, label in group:
            colour = (60, 220, 60) if label else (230, 40, 40)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline="white")
            draw.text((x + r + 2, y - r), str(k), fill="white")
    for line in (line for line in str(boxes or "").splitlines() if line.strip()):
        try:
            draw.rectangle(parse_box(line), outline=(0, 130, 200), width=max(2, r // 2))
        except SceneError:
            continue
    return image
