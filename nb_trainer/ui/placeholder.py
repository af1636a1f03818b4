"""The frame the plot shows before the first real one: never an empty Image (a broken-image icon)."""
from __future__ import annotations

import functools
import io


@functools.lru_cache(maxsize=16)
def placeholder_png(size: tuple[int, int], scale: float = 1.0,
                    text: str = "waiting for the first steps…") -> bytes:
    """A white frame of ``size`` (CSS pixels) at ``scale`` with ``text`` in its middle (Pillow, a few ms)."""
    from PIL import Image, ImageDraw, ImageFont
    w, h = int(size[0] * scale), int(size[1] * scale)
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=int(14 * scale))
    except TypeError:      # Pillow < 10.1: one small bitmap font
        font = ImageFont.load_default()
    draw.rectangle([int(4 * scale), int(4 * scale), w - int(5 * scale), h - int(5 * scale)],
                   outline=(225, 225, 225), width=max(1, int(scale)))
    box = draw.textbbox((0, 0), text, font=font)
    draw.text(((w - (box[2] - box[0])) / 2, (h - (box[3] - box[1])) / 2), text, fill=(110, 110, 110), font=font)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()
