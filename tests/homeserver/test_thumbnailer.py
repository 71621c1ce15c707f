"""The thumbnailer on its own (``homeserver/services/thumbnailer.py``): sizes, formats,
animation, EXIF orientation, odd inputs and pixel limits, decoded back with Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from homeserver.services.thumbnailer import (
    ThumbnailError,
    TooManyPixels,
    make_thumbnail,
    scaled_size,
)

LIMIT = 32_000_000


def write(tmp_path: Path, image: Image.Image, fmt: str, **options: object) -> Path:
    path = tmp_path / f"source.{fmt.lower()}"
    image.save(path, fmt, **options)
    return path


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize(("size", "box", "expected"), [
    ((4000, 3000), (320, 240), (320, 240)),
    ((3000, 4000), (320, 240), (180, 240)),
    ((100, 50), (640, 480), (100, 50)),
    ((10000, 1), (800, 600), (800, 1)),
])
def test_scaled_size(size: tuple[int, int], box: tuple[int, int],
                     expected: tuple[int, int]) -> None:
    assert scaled_size(*size, *box) == expected


def test_animated_webp_stays_animated(tmp_path: Path) -> None:
    frames = [Image.new("RGBA", (300, 200), (i * 60, 0, 0, 255)) for i in range(4)]
    path = write(tmp_path, frames[0], "WEBP", save_all=True, append_images=frames[1:],
                 duration=80, loop=0)
    thumb = make_thumbnail(path, 96, 96, "crop", animated=True, max_pixels=LIMIT)
    image = decoded(thumb.data)
    assert (thumb.content_type, image.size, image.n_frames) == ("image/webp", (96, 96), 4)


def test_animation_over_the_pixel_limit_gives_a_still(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (200, 200), (i, 0, 0)) for i in range(10)]
    path = write(tmp_path, frames[0], "GIF", save_all=True, append_images=frames[1:])
    thumb = make_thumbnail(path, 32, 32, "crop", animated=True, max_pixels=200 * 200 * 5)
    image = decoded(thumb.data)
    assert (thumb.content_type, image.size) == ("image/jpeg", (32, 32))
    assert not getattr(image, "is_animated", False)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: the stored 400x200 shows as 200x400
    path = write(tmp_path, Image.new("RGB", (400, 200), (9, 9, 9)), "JPEG", exif=exif)
    thumb = make_thumbnail(path, 320, 240, "scale", animated=False, max_pixels=LIMIT)
    assert decoded(thumb.data).size == (120, 240)


def test_palette_with_transparency_gives_png(tmp_path: Path) -> None:
    image = Image.new("P", (64, 64), 0)
    path = write(tmp_path, image, "PNG", transparency=0)
    thumb = make_thumbnail(path, 32, 32, "crop", animated=False, max_pixels=LIMIT)
    assert thumb.content_type == "image/png"
    assert decoded(thumb.data).mode == "RGBA"


@pytest.mark.parametrize("mode", ["1", "L", "CMYK", "I;16", "LA"])
def test_other_modes(tmp_path: Path, mode: str) -> None:
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    path = write(tmp_path, Image.new(mode, (50, 40)), fmt)
    thumb = make_thumbnail(path, 32, 32, "scale", animated=False, max_pixels=LIMIT)
    assert decoded(thumb.data).size == (32, 26)


def test_a_single_pixel(tmp_path: Path) -> None:
    path = write(tmp_path, Image.new("RGB", (1, 1)), "PNG")
    assert decoded(make_thumbnail(path, 96, 96, "crop", animated=False,
                                  max_pixels=LIMIT).data).size == (1, 1)
    assert decoded(make_thumbnail(path, 96, 96, "scale", animated=False,
                                  max_pixels=LIMIT).data).size == (1, 1)


def test_pixel_limit(tmp_path: Path) -> None:
    path = write(tmp_path, Image.new("RGB", (2000, 2000)), "PNG")
    with pytest.raises(TooManyPixels):
        make_thumbnail(path, 32, 32, "crop", animated=False, max_pixels=1_000_000)


@pytest.mark.parametrize("data", [
    b"", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0" + b"\x00" * 50,
    b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"%PDF-1.4",
])
def test_undecodable_input(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(data)
    with pytest.raises(ThumbnailError):
        make_thumbnail(path, 32, 32, "crop", animated=False, max_pixels=LIMIT)


def test_truncated_jpeg(tmp_path: Path) -> None:
    out = io.BytesIO()
    Image.new("RGB", (500, 500), (1, 2, 3)).save(out, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(out.getvalue()[: len(out.getvalue()) // 2])
    with pytest.raises(ThumbnailError):
        make_thumbnail(path, 32, 32, "crop", animated=False, max_pixels=LIMIT)


@pytest.mark.parametrize(("size", "box", "expected"), [
    ((1600, 1200), (96, 96), (96, 96)),
    ((1000, 250), (96, 96), (96, 96)),
    ((60, 40), (96, 96), (40, 40)),  # never enlarged: the box's aspect at the picture's size
    ((200, 50), (320, 240), (67, 50)),
    ((90, 300), (96, 96), (90, 90)),
])
def test_crop_never_enlarges(tmp_path: Path, size: tuple[int, int], box: tuple[int, int],
                             expected: tuple[int, int]) -> None:
    path = write(tmp_path, Image.new("RGB", size, (50, 60, 70)), "PNG")
    thumb = make_thumbnail(path, *box, "crop", animated=False, max_pixels=LIMIT)
    assert decoded(thumb.data).size == expected
