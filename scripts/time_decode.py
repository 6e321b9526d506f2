"""Decode time of a JPEG at full size and at the reduced scales /v1/pose may use (service.imaging.load_rgb), of the
window under one client box (load_rgb_window, where service._jpeg is built), and the whole pose preprocessing stage
(plan_pose: decode + crop + normalize) for that box with and without reduction and window.
A few seconds on one core; it times nothing but this process.

    python scripts/time_decode.py                    # basketball1.png from opencv-doc, re-encoded as a 640x480 JPEG
    python scripts/time_decode.py --image photo.jpg  # any image, re-encoded as JPEG
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.spec import ModelSpec  # noqa: E402
from service.imaging import has_window_decode, load_rgb, load_rgb_window, open_image  # noqa: E402
from service.pipeline import crop_regions, crops_union, decode_reduction, plan_pose  # noqa: E402
from service.schemas import PoseOptions  # noqa: E402

DEFAULT_IMAGE = Path("/usr/share/doc/opencv-doc/examples/data/basketball1.png")


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoding")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--box", type=float, nargs=4, default=[250.0, 0.0, 640.0, 480.0], help="x1 y1 x2 y2")
    parser.add_argument("--input-size", type=int, nargs=2, default=[128, 96], help="H W (sbpn-r18 as bundled)")
    args = parser.parse_args()

    if args.image.exists():
        rgb = np.asarray(Image.open(args.image).convert("RGB"))
    else:
        print(f"{args.image} is missing; timing random pixels")
        rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=args.quality)
    data = buf.getvalue()
    h, w = rgb.shape[:2]
    print(f"{args.image.name}: {w}x{h} JPEG, quality {args.quality}, {len(data)} bytes; median of {args.repeat} runs")

    decode = {r: median_ms(lambda r=r: load_rgb(open_image(data, 10**9), r), args.repeat) for r in (1, 2, 4, 8)}
    for r, ms in decode.items():
        print(f"  decode at 1/{r}: {ms:6.2f} ms  ({decode[1] / ms:4.1f}x faster than full size)")

    input_size = (args.input_size[0], args.input_size[1])
    spec = ModelSpec(name="timing", task="pose", input_size=input_size)
    options = PoseOptions(boxes=[args.box])
    r = decode_reduction([args.box], input_size)
    if has_window_decode():
        rect = crops_union(*crop_regions([args.box], input_size[1] / input_size[0]))
        for scale in sorted({1, r}):
            ms = median_ms(lambda k=scale: load_rgb_window(open_image(data, 10**9), k, rect), args.repeat)
            print(f"  decode the window under the box at 1/{scale}: {ms:6.2f} ms  ({decode[scale] / ms:4.1f}x faster)")
    for reduce in (False, True):
        ms = median_ms(lambda reduce=reduce: plan_pose(data, options, spec, 10**9, 20, reduce), args.repeat)
        label = (f"reduced (1/{r}), window" if has_window_decode() else f"reduced (1/{r})") if reduce else "full size"
        print(f"  plan_pose, box {args.box}, input {input_size[0]}x{input_size[1]}, {label}: {ms:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
