"""Decode and validate images: anything a user can hand us becomes an RGB uint8 array or an InvalidImage."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import io
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ServiceError

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 16
DEFAULT_DECODE_MEMORY_MB = 256
# Pillow holds a pixel in 1 byte (modes 1, L, P), 2 (16-bit gray) or 4 (everything else, RGB included).
ONE_BYTE_MODES = {"1", "L", "P"}
TWO_BYTE_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
# Modes that cannot be shrunk as they are (palette indices must not be averaged) are converted at full size
# first; this many more bytes per pixel pay for that.
CONVERSION_BYTES = {"1": 4, "P": 16, "PA": 16, **{mode: 24 for mode in TWO_BYTE_MODES}}
# A progressive JPEG keeps every DCT coefficient of the full image while it decodes, whatever the draft scale.
PROGRESSIVE_JPEG_BYTES = 6
# Only these formats are opened: an icon file, say, declares one size in its header and decodes another.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG includes MPO
M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
REDUCED_SIDE_FACTOR = 2  # shrink by whole factors to at least twice the model's input before the final resize


class InvalidImage(ServiceError):
    """The input is not an image we can classify; the message is a sentence for the user."""


class MemoryBudget:
    """Bytes that concurrent decodes may hold at once: a decode waits until its share is free, so many large
    images arriving together are decoded a few at a time instead of all at once."""

    def __init__(self, capacity: int, wait_seconds: float = 60.0):
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self.in_use = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, amount: int):
        with self._condition:
            if not self._condition.wait_for(lambda: self.in_use + amount <= self.capacity, self.wait_seconds):
                raise InvalidImage("The server is busy decoding other large images; try again in a minute.")
            self.in_use += amount
        try:
            yield
        finally:
            with self._condition:
                self.in_use -= amount
                self._condition.notify_all()


def return_large_buffers_to_the_system(threshold: int = 4 * 2**20) -> bool:
    """Make glibc map every buffer over threshold on its own, and unmap it when freed.

    By default glibc raises that threshold once a large buffer is freed, and from then on serves decoded
    images from per-thread heaps that keep the memory: 16 server threads that each decoded one 200 MB image
    once held 2.8 GB after they were done. False where the C library is not glibc (nothing changes there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """What one image may cost. decode_bytes is both the most one decode may use and the budget that
    concurrent decodes share."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    decode_bytes: int = DEFAULT_DECODE_MEMORY_MB * 2**20
    budget: MemoryBudget = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.budget is None:
            object.__setattr__(self, "budget", MemoryBudget(self.decode_bytes))


DEFAULT_LIMITS = ImageLimits()


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


def load_image(source, size: int | None = None, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Return the image as an RGB uint8 array, resized to size×size when size is given.

    Accepts bytes, a path, a binary file object, a PIL image or a numpy array. Encoded images are checked
    from their header (pixels, sides, memory to decode) before any pixel is decoded.
    """
    if isinstance(source, np.ndarray):
        image = _image_from_array(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = _open(read_bytes(source), limits.max_pixels)
    _check_size(image, limits)
    width, height = image.size
    cost = width * height * PROGRESSIVE_JPEG_BYTES if image.info.get("progressive") else 0
    if size is not None and image.format in ("JPEG", "MPO"):
        # Decoding a big JPEG at 1/2, 1/4 or 1/8 scale is several times faster and loses nothing at 224 px.
        image.draft("RGB", (size, size))
    cost += decode_cost(image)
    if cost > limits.decode_bytes:
        raise InvalidImage(f"Decoding this {image.size[0]}×{image.size[1]} image ({image.mode}) would take "
                           f"{cost / 2**20:.0f} MB; the limit is {limits.decode_bytes / 2**20:.0f} MB. "
                           "Send a smaller image.")
    with limits.budget.reserve(cost):
        try:
            image.load()
        except Exception as error:  # Pillow raises many types for broken data; all mean the same to a user.
            raise InvalidImage("The image data is truncated or corrupt, so it cannot be decoded.") from error
        if size is not None:
            image = _shrink(image, size)
        image = _upright(image)
        image = _to_rgb(image)
        if size is not None:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def decode_cost(image: Image.Image) -> int:
    """Bytes that decoding the image (at its current draft size) and shrinking it may hold at once."""
    mode = image.mode
    per_pixel = 1 if mode in ONE_BYTE_MODES else 2 if mode in TWO_BYTE_MODES else 4
    return image.size[0] * image.size[1] * (per_pixel + CONVERSION_BYTES.get(mode, 0))


def _shrink(image: Image.Image, size: int) -> Image.Image:
    """Right after decoding, shrink by a whole factor (a cheap box filter) so that every later step works on
    a small image; the full-size pixels are released as soon as this returns."""
    factors = tuple(max(1, side // (REDUCED_SIDE_FACTOR * size)) for side in image.size)
    if factors == (1, 1):
        return image
    if image.mode in CONVERSION_BYTES:
        image = _to_rgb(image)
    return image.reduce(factors)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("The file is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"The image has more than {max_pixels:,} pixels, the limit.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImage("This file is not an image that can be read (use JPEG, PNG, GIF, WebP, BMP or TIFF).") from error
    # Animated images: the first frame is the picture.
    image.seek(0)
    return image


def _check_size(image: Image.Image, limits: ImageLimits) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InvalidImage(f"The image is {width}×{height} pixels, over the limit of {limits.max_pixels:,} pixels.")
    if min(width, height) < limits.min_side:
        raise InvalidImage(f"The image is {width}×{height} pixels; each side must be at least {limits.min_side} "
                           "pixels.")


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
