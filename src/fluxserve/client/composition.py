"""Images side by side: how two or more images become one.

The server's engine uses :func:`stitch_horizontally` to feed several reference images to a
single-image Kontext transformer; the SDK's :func:`compose` and ``pair_edit`` use it to build
the image they send. It lives here, in the SDK, because the SDK must not import the server.
"""

from __future__ import annotations

from PIL import Image

Background = tuple[int, int, int] | str
"""A colour PIL understands: an RGB triple, a name such as ``"white"`` or ``"#rrggbb"``."""

WHITE: tuple[int, int, int] = (255, 255, 255)


def stitch_horizontally(
    images: list[Image.Image],
    height: int | None = None,
    gap: int = 0,
    background: Background = WHITE,
) -> Image.Image:
    """Place images side by side at one height (default: the first one's), each scaled without
    distortion, ``gap`` pixels of ``background`` between them.

    This is how several reference images reach a single-image Kontext transformer: as one
    conditioning image ("offset" multi-reference); the SDK's ``compose`` uses it too."""
    height = height or images[0].height
    scaled = [
        im.convert("RGB")
        if im.height == height
        else im.convert("RGB").resize(
            (max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS
        )
        for im in images
    ]
    if len(scaled) == 1:
        return scaled[0]
    width = sum(im.width for im in scaled) + gap * (len(scaled) - 1)
    canvas = Image.new("RGB", (width, height), background)
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def compose(
    left: Image.Image,
    right: Image.Image,
    gap: int = 0,
    background: Background = WHITE,
) -> Image.Image:
    """The two images side by side at the taller one's height, aspect ratios kept."""
    return stitch_horizontally([left, right], max(left.height, right.height), gap, background)
