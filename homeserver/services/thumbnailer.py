"""Making thumbnails with Pillow: blocking code, run in a thread pool by the media service.

``scale`` keeps the picture's aspect ratio within the box; ``crop`` fills the box exactly
(scaled to cover it, the middle kept). Neither ever enlarges a picture (the spec: "homeservers
must never upscale images"): a picture smaller than the box is cropped to the box's aspect
ratio at its own size. The output is JPEG, or PNG when
the picture has transparency; an animated GIF or WebP asked for ``animated`` stays animated
(same format). A picture with more pixels than the limit is refused before it is decoded
(Pillow reads the size from the header), so a small file declaring a huge picture (a
decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

# Formats we decode at all (Pillow knows more; these are what clients send).
_FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO"]
_ANIMATED_FORMATS = {"GIF", "WEBP"}
JPEG_QUALITY = 80


class ThumbnailError(Exception):
    """The content cannot be thumbnailed (not a picture we decode, or broken)."""


class TooManyPixels(ThumbnailError):
    """The picture is larger than the pixel limit."""


@dataclass(frozen=True, slots=True)
class Thumbnail:
    data: bytes
    content_type: str
    width: int
    height: int


def scaled_size(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The size of ``width``x``height`` scaled to fit the box, never enlarged."""
    ratio = min(box_w / width, box_h / height, 1.0)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def _crop(image: Image.Image, box_w: int, box_h: int) -> Image.Image:
    width, height = image.size
    ratio = max(box_w / width, box_h / height)
    if ratio > 1:
        # Never enlarged (the spec: "homeservers must never upscale images"): the largest
        # middle part of the box's aspect ratio the picture holds.
        fit = min(width / box_w, height / box_h)
        box_w, box_h = max(1, round(box_w * fit)), max(1, round(box_h * fit))
        ratio = 1.0
    cover_w = min(width, max(box_w, math.ceil(width * ratio)))
    cover_h = min(height, max(box_h, math.ceil(height * ratio)))
    if (cover_w, cover_h) != image.size:
        image = image.resize((cover_w, cover_h), Image.Resampling.LANCZOS)
    left, top = (cover_w - box_w) // 2, (cover_h - box_h) // 2
    return image.crop((left, top, left + box_w, top + box_h))


def _resize(image: Image.Image, box_w: int, box_h: int, method: str) -> Image.Image:
    if method == "crop":
        return _crop(image, box_w, box_h)
    size = scaled_size(image.width, image.height, box_w, box_h)
    if size == image.size:
        return image.copy()
    return image.resize(size, Image.Resampling.LANCZOS)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info)


def _open(path: Path, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow's own bomb check warns between its limit and twice it: ours comes first.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path, formats=_FORMATS)
        except Image.DecompressionBombError as e:
            raise TooManyPixels(str(e)) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise ThumbnailError(f"not a picture: {e}") from None
        except Exception as e:  # Pillow's decoders fail in many ways on hostile input
            raise ThumbnailError(f"not a picture: {type(e).__name__}: {e}") from None
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        image.close()
        raise TooManyPixels(f"{width}x{height} is over the limit of {max_pixels} pixels")
    return image


def make_thumbnail(path: Path, box_w: int, box_h: int, method: str, *, animated: bool,
                   max_pixels: int) -> Thumbnail:
    """A thumbnail of the picture in ``path`` for a ``box_w``x``box_h`` box.

    Raises:
        TooManyPixels: the picture (or, animated, all its frames) is over ``max_pixels``.
        ThumbnailError: it cannot be decoded.
    """
    image = _open(path, max_pixels)
    try:
        frames = getattr(image, "n_frames", 1)
        if (animated and frames > 1 and image.format in _ANIMATED_FORMATS
                and image.width * image.height * frames <= max_pixels):
            return _animated(image, box_w, box_h, method)
        return _still(image, box_w, box_h, method)
    except ThumbnailError:
        raise
    except Image.DecompressionBombError as e:
        raise TooManyPixels(str(e)) from None
    except Exception as e:  # Pillow's decoders fail in many ways on hostile input
        raise ThumbnailError(f"cannot decode: {type(e).__name__}: {e}") from None
    finally:
        image.close()


def _still(image: Image.Image, box_w: int, box_h: int, method: str) -> Thumbnail:
    if image.format == "JPEG":
        # Decode at the smallest power-of-two reduction still covering the box (a 4000x3000
        # photo decodes at 1/8 for a 320x240 thumbnail): much less work than full size.
        side = max(box_w, box_h)
        image.draft("RGB", (side, side) if method == "crop" else (box_w, box_h))
    image.load()
    image = ImageOps.exif_transpose(image)
    alpha = _has_alpha(image)
    image = image.convert("RGBA" if alpha else "RGB")
    thumb = _resize(image, box_w, box_h, method)
    out = io.BytesIO()
    if alpha:
        thumb.save(out, "PNG", optimize=False)
        content_type = "image/png"
    else:
        thumb.save(out, "JPEG", quality=JPEG_QUALITY)
        content_type = "image/jpeg"
    return Thumbnail(out.getvalue(), content_type, thumb.width, thumb.height)


def _animated(image: Image.Image, box_w: int, box_h: int, method: str) -> Thumbnail:
    fmt = image.format or "GIF"
    frames: list[Image.Image] = []
    durations: list[int] = []
    for frame in ImageSequence.Iterator(image):
        durations.append(int(frame.info.get("duration", 100)))
        frames.append(_resize(frame.convert("RGBA"), box_w, box_h, method))
    out = io.BytesIO()
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=durations,
                   loop=image.info.get("loop", 0), disposal=2)
    return Thumbnail(out.getvalue(), f"image/{fmt.lower()}", frames[0].width,
                     frames[0].height)
