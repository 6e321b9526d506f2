"""Image decoding with limits, and the input tensors of the networks.

The pixel limit is checked on the size the header declares, before any pixel is decoded, so a small file that declares
50000x50000 pixels costs nothing. A JPEG whose pixels will only be shrunk can be decoded at 1/2, 1/4 or 1/8 scale
(`load_rgb`), which costs a fraction of the full decode; where the crops are known before decoding, only the window of
the JPEG under them is decoded (`load_rgb_window`, libjpeg-turbo through service._jpeg).
"""

from __future__ import annotations

import io
import math
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # libjpeg-turbo without Pillow's chunked decode loop: the same pixels in about 40% of the time (640x480 here)
    import simplejpeg
except ImportError:  # a platform without its wheel: Pillow decodes every JPEG
    simplejpeg = None

try:  # service/csrc/jpeg_region.cpp, built where libjpeg-turbo's headers are found (CMakeLists.txt)
    from service import _jpeg
except ImportError:  # not built: every JPEG is decoded whole
    _jpeg = None  # type: ignore[assignment]

from models.spec import ModelSpec
from service.errors import ApiError

ALLOWED_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM"}


JPEG_REDUCTIONS = (8, 4, 2)  # libjpeg's DCT scaling decodes a JPEG at 1/8, 1/4 or 1/2 of its size


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes of an image file -> an image whose header is read and checked, its pixels not yet decoded. ApiError 422
    (empty/undecodable), 415 (not an image), 413 (over the pixel limit)."""
    if not data:
        raise ApiError(422, "empty_image", "the image is empty; send the bytes of a JPEG or PNG file")
    with warnings.catch_warnings():
        # PIL's own decompression-bomb guard would fire on the same images; ours answers first, from the header.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))  # reads the header only
        except UnidentifiedImageError:
            raise ApiError(415, "not_an_image", "the body is not an image PIL recognises; send a JPEG or PNG") from None
        except Image.DecompressionBombError as exc:
            raise ApiError(413, "image_too_large", f"{exc}") from None
        except Exception as exc:
            raise ApiError(422, "undecodable_image", f"cannot read the image header: {exc}") from None
    if img.format not in ALLOWED_FORMATS:
        raise ApiError(415, "unsupported_image_format",
                       f"image format {img.format} is not accepted; send one of {sorted(ALLOWED_FORMATS)}")  # fmt: skip
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ApiError(422, "undecodable_image", f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ApiError(
            413, "image_too_large",
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}; downscale it",
        )  # fmt: skip
    return img


def load_rgb(img: Image.Image, reduction: int = 1) -> tuple[np.ndarray, int]:
    """Decode an image from `open_image` -> (RGB uint8 array [H, W, 3], the reduction r actually used).

    RGB JPEGs are decoded by simplejpeg (`_load_jpeg`), other images by Pillow. A JPEG asked for a reduction of 2, 4 or
    8 is decoded at 1/r scale by libjpeg's DCT scaling (simplejpeg's minimum size, or Pillow's draft mode),
    which skips most of the decoding work; other formats, and r = 1, decode at full size. Decoded pixel i covers
    original pixels r*i .. r*i + r - 1, so with the pixel-center convention x_reduced = (x + 0.5) / r - 0.5.
    """
    full = img.size
    source = getattr(img, "fp", None)  # the BytesIO open_image gave Pillow, header read, pixels not decoded
    if img.format == "JPEG" and img.mode == "RGB" and simplejpeg is not None and isinstance(source, io.BytesIO):
        return _load_jpeg(source.getvalue(), full, reduction)
    if reduction > 1 and img.format == "JPEG":
        # draft picks the largest DCT scale whose result is at least this size: 1/reduction (or less for tiny images).
        img.draft("RGB", (max(1, full[0] // reduction), max(1, full[1] // reduction)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
        except Exception as exc:
            raise ApiError(422, "undecodable_image", f"the {img.format} image cannot be decoded: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8), reduction_used(full, rgb.size)


def _load_jpeg(data: bytes, full: tuple[int, int], reduction: int) -> tuple[np.ndarray, int]:
    """An RGB JPEG by simplejpeg: libjpeg's defaults as in Pillow (the same pixels, at full size and when scaled);
    strict, so a truncated or corrupt file is an error as in Pillow, not grey rows."""
    size = {}
    if reduction > 1:  # the largest DCT scale whose result is at least 1/reduction of the size, as draft() picks
        size = {"min_width": max(1, full[0] // reduction), "min_height": max(1, full[1] // reduction)}
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **size)
    except (ValueError, RuntimeError) as exc:
        raise ApiError(422, "undecodable_image", f"the JPEG image cannot be decoded: {exc}") from None
    return rgb, reduction_used(full, (rgb.shape[1], rgb.shape[0]))


def has_window_decode() -> bool:
    """Whether service._jpeg (JPEG windows with libjpeg-turbo) was built."""
    return _jpeg is not None


def load_rgb_window(
    img: Image.Image, reduction: int, rect: tuple[float, float, float, float], margin: int = 2
) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Decode only the window of an RGB JPEG that holds `rect` = (x1, y1, x2, y2), a rectangle in pixels of the image
    sent (the union of the crops' regions), at 1/reduction scale -> (RGB uint8 [h, w, 3], r, (ox, oy)): pixel [i, j] is
    pixel (ox + j, oy + i) of the whole 1/r-scale decode, and equal to it. The window is the rectangle in decoded pixels
    (x_decoded = (x + 0.5) / r - 0.5) plus `margin` pixels on each side (bilinear sampling reads the next pixel),
    clipped to the image, so a crop of the rectangle taken from it is the crop taken from the whole image.

    libjpeg-turbo skips the rows above the window (entropy decoding only), does not reconstruct the columns beside it
    and stops after its last row. Falls back to `load_rgb` (the whole image, offset (0, 0)) where service._jpeg is not
    built or the image is not an RGB JPEG."""
    full = img.size
    source = getattr(img, "fp", None)
    if _jpeg is None or img.format != "JPEG" or img.mode != "RGB" or not isinstance(source, io.BytesIO):
        rgb, r = load_rgb(img, reduction)
        return rgb, r, (0, 0)
    r = reduction if reduction in JPEG_REDUCTIONS else 1
    width, height = -(-full[0] // r), -(-full[1] // r)  # libjpeg's ceil(W / r) x ceil(H / r)
    x1, y1, x2, y2 = ((v + 0.5) / r - 0.5 for v in rect)
    ox, oy = max(0, math.floor(x1) - margin), max(0, math.floor(y1) - margin)
    ex, ey = min(width, math.ceil(x2) + margin + 1), min(height, math.ceil(y2) + margin + 1)
    if ex <= ox or ey <= oy:  # the rectangle misses the image: every crop pixel is border, any window will do
        ox, oy, ex, ey = 0, 0, 1, 1
    try:
        rgb = _jpeg.decode_region(source.getvalue(), r, ox, oy, ex, ey)
    except RuntimeError as exc:
        raise ApiError(422, "undecodable_image", f"the JPEG image cannot be decoded: {exc}") from None
    return rgb, r, (ox, oy)


def reduction_used(full: tuple[int, int], decoded: tuple[int, int]) -> int:
    """The integer r of a DCT-scaled decode, read from the sizes: libjpeg makes ceil(W / r) x ceil(H / r) pixels.
    (The ratio W / w is not the scale when W is not a multiple of r: 637 px at 1/8 are 80 px, not 637 / 80.)"""
    for r in (1, *sorted(JPEG_REDUCTIONS)):
        if all(-(-f // r) == d for f, d in zip(full, decoded, strict=True)):
            return r
    raise RuntimeError(f"an image of {full[0]}x{full[1]} pixels decoded to {decoded[0]}x{decoded[1]}: no DCT scale")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes of an image file -> RGB uint8 array [H, W, 3] at full size. ApiError 422 (empty/undecodable), 415 (not an
    image), 413 (over the pixel limit)."""
    return load_rgb(open_image(data, max_pixels))[0]


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"cannot encode a {fmt} image")
    return bytes(buf.tobytes())


def normalize(rgb_batch: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB -> float32 [N, C, H, W] normalized as the spec says (grey if in_chans == 1)."""
    mean = np.asarray(spec.mean, np.float32)[: spec.in_chans]
    std = np.asarray(spec.std, np.float32)[: spec.in_chans]
    if spec.in_chans == 1:
        x = (rgb_batch.astype(np.float32) / 255.0 @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))
    # (x / 255 - mean) / std as one multiply-add per value, written straight into the NCHW result
    scale, bias = 1.0 / (255.0 * std), -mean / std
    n, h, w, c = rgb_batch.shape
    out = np.empty((n, c, h, w), np.float32)
    for k in range(c):
        np.multiply(rgb_batch[..., k], scale[k], out=out[:, k])
        out[:, k] += bias[k]
    return out


def classification_input(rgb: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The usual evaluation transform: resize the shorter side to size/0.875, centre-crop to the input size.
    Small inputs (e.g. 28x28) are resized directly."""
    h_in, w_in = spec.input_size
    h, w = rgb.shape[:2]
    if min(h_in, w_in) >= 64:
        ratio = 0.875
        scale = max(h_in / ratio / h, w_in / ratio / w)
        nh, nw = max(h_in, round(h * scale)), max(w_in, round(w * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(rgb, (nw, nh), interpolation=interp)
        top, left = (nh - h_in) // 2, (nw - w_in) // 2
        crop = resized[top : top + h_in, left : left + w_in]
    else:
        crop = cv2.resize(rgb, (w_in, h_in), interpolation=cv2.INTER_AREA)
    return normalize(crop[None], spec)
