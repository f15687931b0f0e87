"""An `ImageExplanation` as a picture: one panel per map (the whole query first, then each
text term), each the picture the model saw with the relevance upsampled, coloured and
blended over it, a label above. PNG bytes, for the CLI and the bot alike."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

PANEL = 256  # pixels on a side
LABEL_H, PAD = 28, 8
ALPHA = 0.55  # how much of the colour covers the picture where relevance is highest
BG, FG = (43, 45, 49), (242, 243, 245)
# a perceptual dark-to-bright ramp (black, purple, red, orange, pale yellow)
_STOPS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], np.float32)
_FONT_CANDIDATES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                    "Arial.ttf", "LiberationSans-Regular.ttf")


def _font(size: int):
    for name in _FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def colourise(heat: np.ndarray) -> np.ndarray:
    """(h, w) values in [0, 1] -> (h, w, 3) uint8 along the ramp."""
    x = np.clip(heat, 0, 1) * (len(_STOPS) - 1)
    lo = np.minimum(x.astype(int), len(_STOPS) - 2)
    frac = (x - lo)[..., None]
    return (_STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac).astype(np.uint8)


def upsample(heat: np.ndarray, side: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()


def panel(picture: Image.Image, heat: np.ndarray, side: int = PANEL) -> Image.Image:
    base = np.asarray(picture.convert("RGB").resize((side, side), Image.Resampling.BICUBIC), np.float32)
    up = np.clip(upsample(heat, side), 0, 1)
    alpha = (ALPHA * (0.25 + 0.75 * up))[..., None]  # the whole picture tinted a little
    mixed = base * (1 - alpha) + colourise(up).astype(np.float32) * alpha
    return Image.fromarray(mixed.astype(np.uint8), "RGB")


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def overlay_png(explanation, side: int = PANEL) -> bytes:
    """The panels side by side, each labelled ("query: …", then each term)."""
    heat = explanation.heatmaps
    n = len(heat.labels)
    if n == 2 and np.array_equal(heat.maps[0], heat.maps[1]):
        n = 1  # one text term alone: its map is the query's
    w = PAD + n * (side + PAD)
    h = PAD + LABEL_H + side + PAD
    canvas = Image.new("RGB", (w, h), BG)
    draw = ImageDraw.Draw(canvas)
    font = _font(15)
    for i in range(n):
        x = PAD + i * (side + PAD)
        label = f"query: {explanation.query}" if i == 0 else heat.labels[i]
        draw.text((x, PAD + 4), _fit(draw, label, font, side), font=font, fill=FG)
        canvas.paste(panel(explanation.picture, heat.maps[i], side), (x, PAD + LABEL_H))
    info = PngInfo()
    info.add_text("Panels", str(n))
    info.add_text("Labels", " | ".join(["query"] + list(heat.labels[1:n])))
    out = io.BytesIO()
    canvas.save(out, "PNG", pnginfo=info, optimize=True)
    return out.getvalue()
