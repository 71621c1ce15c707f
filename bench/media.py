"""The media repository: thumbnail throughput and upload/download throughput.

1. thumbnails in process: a 4000x3000 photo-like JPEG thumbnailed at each of Synapse's default
   sizes (``homeserver.services.thumbnailer``, the code the server runs in its thread pool),
   ``--thumbnails`` times per size or ``--seconds`` at most: thumbnails/s and p50/p99.
2. a real server (SQLite): ``--workers`` clients upload ``--uploads`` bodies of
   ``--upload-kib`` KiB (distinct content each) with ``POST /_matrix/media/v3/upload``, then
   download them (``GET /_matrix/client/v1/media/download``): requests/s, MiB/s, p50/p99.
3. on that server, first thumbnails of distinct 4000x3000 uploads (made on request) and the
   same thumbnails again (from the disk cache): thumbnails/s.

Prints one JSON line with the server's peak RSS and the machine. Every loop is bounded in
count and time.

    python bench/media.py [--thumbnails 20] [--uploads 400] [--upload-kib 1024]
                          [--workers 8] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import BenchServer, emit, machine, percentiles, run_load
from PIL import Image, ImageDraw, ImageFilter

from homeserver.config import DEFAULT_THUMBNAIL_SIZES
from homeserver.services.thumbnailer import make_thumbnail

PHOTO_SIZE = (4000, 3000)


def photo(seed: int) -> bytes:
    """A photo-like 4000x3000 JPEG (shapes, blur and noise: not a flat colour, which
    compresses and decodes unrealistically fast)."""
    rng = random.Random(seed)
    small = Image.new("RGB", (400, 300))
    draw = ImageDraw.Draw(small)
    for _ in range(60):
        x, y = rng.randrange(400), rng.randrange(300)
        draw.ellipse((x, y, x + rng.randrange(20, 150), y + rng.randrange(20, 150)),
                     fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    image = small.filter(ImageFilter.GaussianBlur(3)).resize(PHOTO_SIZE)
    noise = Image.effect_noise(PHOTO_SIZE, 24).convert("RGB")
    image = Image.blend(image, noise, 0.15)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def bench_thumbnailer(count: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        path.write_bytes(photo(1))
        figures: dict[str, Any] = {"source_bytes": path.stat().st_size}
        for size in DEFAULT_THUMBNAIL_SIZES:
            samples: list[float] = []
            deadline = time.monotonic() + seconds
            while len(samples) < count and time.monotonic() < deadline:
                started = time.perf_counter()
                make_thumbnail(path, size.width, size.height, size.method, animated=False,
                               max_pixels=32_000_000)
                samples.append((time.perf_counter() - started) * 1000)
            total_s = sum(samples) / 1000
            figures[f"{size.width}x{size.height}_{size.method}"] = {
                "done": len(samples), "per_s": round(len(samples) / total_s, 1),
                **percentiles(samples)}
        return figures


async def bench_server(args: argparse.Namespace) -> dict[str, Any]:
    server = BenchServer()
    figures: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.workers * 2)) as session:
            user = await server.register(session, "mediauser", "benchmark password")
            headers = {"Authorization": f"Bearer {user['access_token']}"}
            body_bytes = args.upload_kib * 1024
            bodies = [os.urandom(body_bytes) for _ in range(min(args.uploads, 64))]
            media_ids: list[str] = []

            class Upload:
                def __init__(self, i: int) -> None:
                    self.i = i

                async def __aenter__(self) -> Any:
                    # Distinct content per upload: a counter in front of a shared random body.
                    n = len(media_ids) + self.i * 1_000_000 + random.randrange(1 << 30)
                    data = n.to_bytes(8, "big") + bodies[n % len(bodies)][8:]
                    self.ctx = session.post(
                        f"{server.base}/_matrix/media/v3/upload", data=data,
                        headers={**headers, "Content-Type": "application/octet-stream"})
                    resp = await self.ctx.__aenter__()
                    if resp.status == 200:
                        media_ids.append((await resp.json())["content_uri"].rsplit("/", 1)[1])
                    return resp

                async def __aexit__(self, *exc: Any) -> None:
                    await self.ctx.__aexit__(*exc)

            up = await run_load(args.workers, args.seconds, args.uploads, Upload)
            up["mib_per_s"] = round(up["per_s"] * body_bytes / 2**20, 1)
            figures["upload"] = up
            downloads = iter(range(10**9))

            def download(_i: int) -> Any:
                media_id = media_ids[next(downloads) % len(media_ids)]
                return session.get(
                    f"{server.base}/_matrix/client/v1/media/download/bench.local/{media_id}",
                    headers=headers)

            down = await run_load(args.workers, args.seconds, args.uploads, download)
            down["mib_per_s"] = round(down["per_s"] * body_bytes / 2**20, 1)
            figures["download"] = down

            # Thumbnails through the server: first (made on request), then cached.
            photos = []
            for seed in range(args.thumbnail_photos):
                async with session.post(
                        f"{server.base}/_matrix/media/v3/upload", data=photo(100 + seed),
                        headers={**headers, "Content-Type": "image/jpeg"}) as resp:
                    photos.append((await resp.json())["content_uri"].rsplit("/", 1)[1])
            sizes = [(32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"),
                     (640, 480, "scale"), (800, 600, "scale")]
            jobs = [(p, s) for p in photos for s in sizes]

            def thumb(_i: int) -> Any:
                media_id, (w, h, m) = next(it_jobs)
                return session.get(
                    f"{server.base}/_matrix/client/v1/media/thumbnail/bench.local/{media_id}",
                    params={"width": str(w), "height": str(h), "method": m}, headers=headers)

            it_jobs = iter(jobs)
            figures["thumbnail_first"] = await run_load(
                min(args.workers, 4), args.seconds, len(jobs), thumb)
            it_jobs = iter(jobs * 4)
            figures["thumbnail_cached"] = await run_load(
                args.workers, args.seconds, len(jobs) * 4, thumb)
        figures["server_peak_rss_mib"] = server.peak_rss_mib()
    finally:
        server.stop()
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--thumbnails", type=int, default=20)
    parser.add_argument("--thumbnail-photos", type=int, default=8)
    parser.add_argument("--uploads", type=int, default=400)
    parser.add_argument("--upload-kib", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    figures: dict[str, Any] = {"bench": "media"}
    figures["thumbnailer_4000x3000_jpeg"] = bench_thumbnailer(args.thumbnails, args.seconds)
    figures.update(await bench_server(args))
    figures["machine"] = machine()
    emit(figures)


if __name__ == "__main__":
    asyncio.run(main())
