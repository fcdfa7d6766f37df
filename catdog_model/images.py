"""Decode and validate images: anything a user can hand us becomes an RGB uint8 array or an InvalidImage."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 16


class InvalidImage(ValueError):
    """The input is not an image we can classify; the message is a sentence for the user."""


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(source) -> bytes:
    """The raw bytes of a path, bytes or binary file object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImage(f"There is no file at {path.name!r}.")
        return path.read_bytes()
    if hasattr(source, "read"):
        return source.read()
    raise InvalidImage(f"Expected image bytes, a file path, a PIL image or an array, not {type(source).__name__}.")


def load_image(source, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
    """Return the image as an RGB uint8 array, resized to size×size when size is given.

    Accepts bytes, a path, a binary file object, a PIL image or a numpy array.
    """
    if isinstance(source, np.ndarray):
        image = _image_from_array(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = _open(read_bytes(source), max_pixels)
    _check_size(image, max_pixels, min_side)
    if size is not None and image.format == "JPEG":
        # Decoding a big JPEG at 1/2, 1/4 or 1/8 scale is several times faster and loses nothing at 224 px.
        image.draft("RGB", (size, size))
    try:
        image.load()
    except Exception as error:  # Pillow raises many types for broken data; all mean the same to a user.
        raise InvalidImage("The image data is truncated or corrupt, so it cannot be decoded.") from error
    image = _upright(image)
    image = _to_rgb(image)
    if size is not None:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("The file is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"The image has more than {max_pixels:,} pixels, the limit.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImage("This file is not an image that can be read (use JPEG, PNG, GIF, WebP, BMP or TIFF).") from error
    # Animated images: the first frame is the picture.
    image.seek(0)
    return image


def _check_size(image: Image.Image, max_pixels: int, min_side: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(f"The image is {width}×{height} pixels, over the limit of {max_pixels:,} pixels.")
    if min(width, height) < min_side:
        raise InvalidImage(f"The image is {width}×{height} pixels; each side must be at least {min_side} pixels.")


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidImage(f"An image array must be H×W, H×W×3 or H×W×4, not {array.shape}.")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and np.nanmax(array, initial=0) <= 1.0:
            array = array * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # A broken EXIF block should not cost the user the picture itself.
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float grayscale: scale to 8 bits rather than let convert() clip everything above 255.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as a browser shows them, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
