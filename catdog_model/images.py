"""Decode and validate images: anything a user can hand us becomes an RGB uint8 array or an InvalidImage."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import hashlib
import io
import math
import struct
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import DEFAULT_DECODE_MEMORY_MB, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, Settings
from .errors import ServiceError, shown

DECODE_WAIT_SECONDS = 2.0  # the most a decode waits for memory that other decodes hold, then "busy"
DECODE_CPU_SECONDS = 5.0  # the most CPU one decode may take in Pillow's parsers, which loop in Python
# What decoding holds, in bytes per pixel of the full-size image, measured for every mode Pillow opens
# (tests/test_images.py measures each worst case's peak memory against it):
ONE_BYTE_MODES = {"1", "L", "P"}
TWO_BYTE_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
# Modes converted to RGB at full size before they can be shrunk (palette indices must not be averaged; 16-bit
# gray is scaled to 8 bits through float64), and what that conversion holds on top of the decoded image.
CONVERTED_BEFORE_SHRINKING = {"1": 4, "P": 4, "PA": 16, **{mode: 28 for mode in TWO_BYTE_MODES}}
TRANSPARENT_PALETTE_BYTES = 16  # P with transparency: RGBA, a white background, their composite, then RGB
# Image.reduce premultiplies alpha into a full-size copy (La, RGBa) before it averages.
PREMULTIPLIED_BYTES = {"LA": 4, "RGBA": 4, "PA": 4}
# Pillow's WebP plugin decodes into libwebp's buffer, copies it to bytes, then unpacks: three more copies.
FORMAT_BYTES = {"WEBP": 12}
# A JPEG of several scans (progressive, or one scan per component) keeps every DCT coefficient of the full
# image while it decodes, 2 bytes per pixel and component, whatever the draft scale.
COEFFICIENT_BYTES = 2
# After shrinking, up to four RGBA copies of the shrunk image (upright, RGBA, white background, composite).
WORK_BYTES = 16
# Only these formats are opened: an icon file, say, declares one size in its header and decodes another.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG includes MPO
M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
REDUCED_SIDE_FACTOR = 2  # shrink by whole factors to at least twice the model's input before the final resize
# Pillow's parsers read each marker, chunk and block of a file on its own: a photo needs a few reads per 64 KB
# (libpng writes 8 KB data chunks: 3 reads each), a file made of a million empty blocks one read per few bytes.
BYTES_PER_READ = 512
MIN_READS = 4096
TOO_MANY_BLOCKS = "This file is made of more metadata blocks than any photo has, so it is not decoded."
EXIF_ORIENTATION = 0x0112
MAX_EXIF_BYTES = 65536  # a JPEG's EXIF segment cannot be larger; a larger block is no camera's, and is ignored
MAX_TIFF_TAGS = 200
MAX_TIFF_TAG_BYTES = 2**20
# Read by Pillow as it opens a JPEG: the EXIF block (for the resolution), the multi-picture index (always).
JPEG_METADATA = {b"Exif\0\0": "This JPEG file's EXIF block", b"MPF\0": "This JPEG file's multi-picture block"}
SUB_DIRECTORIES = (0x8769, 0x8825, 0xA005)  # EXIF, GPS, interoperability: Pillow reads them with the first
TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}
SCANS = "catdog_scans"  # where _open notes, in a JPEG's info, how many scans it counted
MAX_JPEG_SCANS = 100  # as libjpeg's djpeg -maxscans suggests; progressive photos have about ten
# Each scan of a multi-scan JPEG walks every block of the full image, whatever the draft scale: a 12-megapixel
# progressive photo of 10 scans is 120 million block-pixel visits, about a second of CPU here.
MAX_JPEG_SCAN_PIXELS = 120_000_000
ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}
STORED_JPEG_QUALITY = 95  # uploads re-encoded to a bounded size keep what a classifier could use
# A decode of at most this share of the budget is small (a phone photo, decoded at a JPEG draft scale, is a few
# MB); small decodes also have a reserve of their own, so they never wait behind large ones.
SMALL_SHARE = 16
RESERVE_SHARE = 4


class InvalidImage(ServiceError):
    """The input is not an image we can classify; the message is a sentence for the user."""


class ServerBusy(ServiceError):
    """Other decodes hold the memory this one needs; the same request may succeed in a few seconds."""

    retry_after_seconds = 5

    def __init__(self, amount: int):
        super().__init__("The server is busy decoding other large images; try again in a few seconds.")
        self.amount = amount


# The monotonic time after which a decode in this context no longer waits for memory; None: each decode waits
# up to the budget's wait_seconds. web.admitted sets it to -inf (its caller waits on the event loop instead,
# keeping the shared threads free); a batch or an upload sets one deadline for the whole call
# (waiting_at_most), so a hundred images cannot wait two seconds each.
wait_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("wait_deadline", default=None)


@contextlib.contextmanager
def waiting_at_most(seconds: float):
    """Decodes inside wait for memory at most `seconds` in all."""
    context = wait_deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        wait_deadline.reset(context)


class MemoryBudget:
    """Bytes that concurrent decodes may hold at once: a decode that does not fit waits up to wait_seconds (or
    until its context's wait_deadline) for others to finish, then is refused with ServerBusy. Small decodes (at most
    capacity / SMALL_SHARE) draw first on a reserve of capacity / RESERVE_SHARE more, so a flood of large
    images cannot hold up a photo."""

    def __init__(self, capacity: int, wait_seconds: float = DECODE_WAIT_SECONDS):
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self.reserve_capacity = capacity // RESERVE_SHARE
        self.small = capacity // SMALL_SHARE
        self.in_use = 0
        self.reserve_in_use = 0
        self._condition = threading.Condition()

    def _pool(self, amount: int) -> str | None:
        if amount <= self.small and self.reserve_in_use + amount <= self.reserve_capacity:
            return "reserve"
        return "shared" if self.in_use + amount <= self.capacity else None

    def has_room(self, amount: int) -> bool:
        with self._condition:
            return self._pool(amount) is not None

    @contextlib.contextmanager
    def reserve(self, amount: int):
        with self._condition:
            deadline = wait_deadline.get()
            timeout = self.wait_seconds if deadline is None else deadline - time.monotonic()
            if timeout > 0:
                self._condition.wait_for(lambda: self._pool(amount) is not None, timeout)
            pool = self._pool(amount)
            if pool is None:
                raise ServerBusy(amount)
            self._take(pool, amount)
        try:
            yield
        finally:
            with self._condition:
                self._take(pool, -amount)
                self._condition.notify_all()

    def _take(self, pool: str, amount: int) -> None:
        if pool == "reserve":
            self.reserve_in_use += amount
        else:
            self.in_use += amount


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

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        """The limits every decode in one process shares (make them once per process: they hold the memory
        budget)."""
        return cls(settings.max_pixels, settings.min_side, settings.decode_memory_mb * 2**20)


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
            raise InvalidImage(f"There is no file at {shown(path.name)}.")
        return path.read_bytes()
    if hasattr(source, "read"):
        return source.read()
    raise InvalidImage(f"Expected image bytes, a file path, a PIL image or an array, not {type(source).__name__}.")


def load_image(source, size: int | None = None, limits: ImageLimits = DEFAULT_LIMITS, fit: bool = False) -> np.ndarray:
    """Return the image as an RGB uint8 array, resized to size×size when size is given — or, with fit, shrunk
    so that its longer side is at most size, its aspect kept.

    Accepts bytes, a path, a binary file object, a PIL image or a numpy array. Encoded images are checked
    from their header (pixels, sides, memory to decode) before any pixel is decoded, and their parsing is
    bounded in reads and CPU time.
    """
    try:
        if isinstance(source, np.ndarray):
            image = _image_from_array(source)
        elif isinstance(source, Image.Image):
            image = source
        else:
            image = _open(read_bytes(source), limits.max_pixels)
        _check_size(image, limits)
        cost = drafted_cost(image, size, fit)
        if cost > limits.decode_bytes:
            raise InvalidImage(f"Decoding this {image.size[0]}×{image.size[1]} image ({image.mode}) would take "
                               f"{cost / 2**20:.0f} MB; the limit is {limits.decode_bytes / 2**20:.0f} MB. "
                               "Send a smaller image.")
        with limits.budget.reserve(cost):
            try:
                image.load()
            except _TooCostly:
                raise
            except Exception as error:  # Pillow raises many types for broken data; all mean the same to a user.
                raise InvalidImage("The image data is truncated or corrupt, so it cannot be decoded.") from error
            if size is not None:
                image = _shrink(image, size, fit)
            image = _upright(image)
            image = _to_rgb(image)
            if size is not None and (not fit or max(image.size) > size):
                image = image.resize(_fitted(image.size, size) if fit else (size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except _TooCostly as error:
        raise InvalidImage(str(error)) from None


def drafted_cost(image: Image.Image, size: int | None, fit: bool = False) -> int:
    """Set a JPEG to decode at the smallest scale that serves size, and return what decoding the image will
    hold (decode_cost, and a multi-scan JPEG's coefficients at full size)."""
    width, height = image.size
    scans = image.info.get(SCANS, 1)
    kept = image.format in ("JPEG", "MPO") and (scans > 1 or image.info.get("progressive"))
    cost = width * height * COEFFICIENT_BYTES * len(image.getbands()) if kept else 0
    if kept and scans * width * height > MAX_JPEG_SCAN_PIXELS:
        raise InvalidImage(f"This {width}×{height} JPEG is stored in {scans} scans, each of which would be decoded "
                           "at full size; save it as an ordinary (baseline) JPEG.")
    if size is not None and image.format in ("JPEG", "MPO"):
        # Decoding a big JPEG at 1/2, 1/4 or 1/8 scale is several times faster and loses nothing at 224 px.
        image.draft("RGB", _fitted(image.size, size) if fit else (size, size))
    return cost + decode_cost(image, size, fit)


def jpeg_scans(data: bytes) -> int:
    """How many scans the JPEG's image has: its segments are walked to the first scan (an EXIF thumbnail's
    scans, inside a segment, do not count), then start-of-scan markers are counted to the end of the image —
    inside a scan's data 0xFF is stuffed as FF 00, so FF DA there is always a marker. On the way, the metadata
    blocks that Pillow reads as it opens the file are checked (_check_metadata)."""
    position, segments = 2, 0
    while position + 4 <= len(data) and data[position] == 0xFF and segments < MIN_READS:
        marker = data[position + 1]
        if marker == 0xDA:
            end = data.find(b"\xff\xd9", position)
            return 1 + data.count(b"\xff\xda", position + 2, end if end >= 0 else len(data))
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        standalone = 0xD0 <= marker <= 0xD7 or marker == 0x01  # markers without a length
        length = 0 if standalone else struct.unpack_from(">H", data, position + 2)[0]
        for header, what in JPEG_METADATA.items():  # in APP1 and APP2 segments
            if marker in (0xE1, 0xE2) and data.startswith(header, position + 4):
                _check_metadata(data[position + 4 + len(header):position + 2 + length], what)
        position += 2 + length
        segments += 1
    if segments >= MIN_READS:
        raise _TooCostly(TOO_MANY_BLOCKS)
    return 0


def decode_cost(image: Image.Image, size: int | None = None, fit: bool = False) -> int:
    """Bytes that decoding the image (at its current draft size), shrinking it towards size and making it RGB
    may hold at once."""
    mode = image.mode
    width, height = image.size
    pixels = width * height
    per_pixel = (1 if mode in ONE_BYTE_MODES else 2 if mode in TWO_BYTE_MODES else 4)
    if mode == "P" and "transparency" in image.info:
        per_pixel += TRANSPARENT_PALETTE_BYTES
    else:
        per_pixel += CONVERTED_BEFORE_SHRINKING.get(mode, 0)
    per_pixel += PREMULTIPLIED_BYTES.get(mode, 0) + FORMAT_BYTES.get(image.format, 0)
    cost = pixels * per_pixel
    if size is None:
        return cost + pixels * WORK_BYTES
    factors = _shrink_factors(image.size, size, fit)
    shrunk = math.ceil(width / factors[0]) * math.ceil(height / factors[1])
    return cost + shrunk * WORK_BYTES


def _shrink_factors(image_size: tuple[int, int], size: int, fit: bool) -> tuple[int, int]:
    """Whole factors to shrink by: to at least REDUCED_SIDE_FACTOR × size on each side for a square result,
    or, with fit, by one factor to at least size on the longer side."""
    if fit:
        return (max(1, max(image_size) // size),) * 2
    return tuple(max(1, side // (REDUCED_SIDE_FACTOR * size)) for side in image_size)


def _fitted(image_size: tuple[int, int], size: int) -> tuple[int, int]:
    """The size whose longer side is size, in the aspect of image_size."""
    longer = max(image_size)
    return tuple(max(1, round(side * size / longer)) for side in image_size)


def _shrink(image: Image.Image, size: int, fit: bool = False) -> Image.Image:
    """Right after decoding, shrink by a whole factor (a cheap box filter) so that every later step works on
    a small image; the full-size pixels are released as soon as this returns. With fit, both sides by the
    same factor."""
    factors = _shrink_factors(image.size, size, fit)
    if factors == (1, 1):
        return image
    if image.mode in CONVERTED_BEFORE_SHRINKING:
        image = _to_rgb(image)
    return image.reduce(factors)


def image_size(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[str, int, int]:
    """The format, width and height an encoded image declares, read from its header (nothing is decoded)."""
    try:
        image = _open(data, limits.max_pixels)
    except _TooCostly as error:
        raise InvalidImage(str(error)) from None
    _check_size(image, limits)
    return image.format, *image.size


def storable_copy(data: bytes, max_side: int, max_bytes: int, limits: ImageLimits = DEFAULT_LIMITS,
                  declared: tuple[str, int, int] | None = None) -> tuple[bytes, str]:
    """Bytes to keep of an uploaded image, and their format, once the image is checked by decoding it: the
    original when its sides are at most max_side and it is at most max_bytes, else a JPEG of it shrunk to
    max_side on its longer side (STORED_JPEG_QUALITY). declared: image_size's answer, when already asked."""
    image_format, width, height = declared or image_size(data, limits)
    if max(width, height) <= max_side and len(data) <= max_bytes:
        load_image(data, size=32, limits=limits)
        return data, image_format
    if min(_fitted((width, height), max_side)) < limits.min_side:
        raise InvalidImage(f"The image is {width}×{height} pixels: at {max_side} pixels on its longer side, its "
                           f"shorter side would be under {limits.min_side} pixels. Crop it closer to the animal.")
    buffer = io.BytesIO()
    Image.fromarray(load_image(data, size=max_side, limits=limits, fit=True)).save(
        buffer, "JPEG", quality=STORED_JPEG_QUALITY)
    return buffer.getvalue(), "JPEG"


class _TooCostly(Exception):
    """Raised from inside Pillow's parsers; not an OSError or ValueError, which they catch and go on from."""


class _GuardedStream(io.BytesIO):
    """The encoded bytes as Pillow reads them, with a bound on the number of reads and on this thread's CPU
    time: Pillow's parsers loop in Python over markers, chunks and blocks, so a file of a million empty ones
    costs seconds of CPU and nothing in memory."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.reads_left = MIN_READS + len(data) // BYTES_PER_READ
        self.cpu_deadline = time.thread_time() + DECODE_CPU_SECONDS

    def read(self, size: int | None = -1) -> bytes:
        self.reads_left -= 1
        if self.reads_left < 0:
            raise _TooCostly(TOO_MANY_BLOCKS)
        if time.thread_time() > self.cpu_deadline:
            raise _TooCostly(f"Decoding this file took over {DECODE_CPU_SECONDS:.0f} s of CPU, so it was stopped.")
        return super().read(size)


def _check_container(data: bytes) -> int:
    """Refuse, before Pillow parses them, the layouts whose bookkeeping costs more than their pixels: a TIFF
    structure (a TIFF file; a JPEG's EXIF and multi-picture blocks) with many tags or much tag data in the
    directories Pillow reads — it copies each tag's data, however many tags point at the same bytes, and makes
    a Python object per strip —, a JPEG of many scans (each one walks every block), and a run-length-encoded
    BMP (Pillow's decoder for it overshoots its buffer). Returns a JPEG's scans."""
    if data[:4] in (b"II*\0", b"MM\0*"):
        _check_metadata(data, "This TIFF file's metadata")
    elif data[:2] == b"\xff\xd8":
        scans = jpeg_scans(data)
        if scans <= MAX_JPEG_SCANS:
            return scans
        raise InvalidImage(f"This JPEG file has over {MAX_JPEG_SCANS} scans; a photo has at most a few dozen. Save "
                           "it again as an ordinary JPEG.")
    elif data[:2] == b"BM" and len(data) >= 34 and struct.unpack_from("<I", data, 30)[0] in (1, 2):
        raise InvalidImage("Run-length-encoded BMP files are not read; save it as PNG or JPEG.")
    return 0


def _check_metadata(block: bytes, what: str) -> None:
    tags, tag_bytes = tiff_metadata_cost(block)
    if tags > MAX_TIFF_TAGS or tag_bytes > MAX_TIFF_TAG_BYTES:
        raise InvalidImage(f"{what} holds {tags:,} tags and {tag_bytes:,} bytes of tag data; a photo's needs "
                           f"under {MAX_TIFF_TAGS} and {MAX_TIFF_TAG_BYTES // 2**20} MB. Save it as JPEG or PNG "
                           "without its metadata.")


def tiff_metadata_cost(block: bytes) -> tuple[int, int]:
    """(tags, bytes of tag data) in a TIFF structure's first directory and in the EXIF, GPS and
    interoperability directories it points to: what Pillow copies when it reads the metadata. A directory
    that cannot be read is not counted (Pillow says what is wrong with it)."""
    order = "<" if block[:2] == b"II" else ">"
    try:
        pending = [struct.unpack_from(order + "I", block, 4)[0]]
    except struct.error:
        return 0, 0
    seen: set[int] = set()
    tags = tag_bytes = 0
    while pending and tags <= MAX_TIFF_TAGS:
        directory = pending.pop()
        if directory in seen:
            continue
        seen.add(directory)
        try:
            (count,) = struct.unpack_from(order + "H", block, directory)
            tags += count
            for entry in range(directory + 2, directory + 2 + 12 * min(count, MAX_TIFF_TAGS + 1), 12):
                tag, kind, values, pointer = struct.unpack_from(order + "HHII", block, entry)
                tag_bytes += values * TIFF_TYPE_BYTES.get(kind, 8)
                if tag in SUB_DIRECTORIES:
                    pending.append(pointer)
        except struct.error:
            continue
    return tags, tag_bytes


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("The file is empty (0 bytes).")
    scans = _check_container(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(_GuardedStream(data), formats=ACCEPTED_FORMATS)
    except _TooCostly:
        raise
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"The image has more than {max_pixels:,} pixels, the limit.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImage("This file is not an image that can be read (use JPEG, PNG, GIF, WebP, BMP or TIFF).") from error
    if scans:
        image.info[SCANS] = scans
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
    """Turn the picture as its EXIF orientation says (a TIFF's own tag, or the EXIF block's first IFD).
    Pillow is not asked: exif_transpose re-serialises the whole EXIF block (a minute of CPU for 12 MB of it),
    and getexif() copies every tag's data, however many tags point at the same megabytes."""
    if image.format == "TIFF":
        orientation = image.tag_v2.get(EXIF_ORIENTATION)
    else:
        orientation = exif_orientation(image.info.get("exif") or b"")
    transpose = ORIENTATIONS.get(orientation)
    return image.transpose(transpose) if transpose is not None else image


def exif_orientation(block: bytes) -> int | None:
    """The orientation tag of an EXIF block ("Exif\\0\\0" and a TIFF header, or the header alone): None when
    it has none, is broken, or is larger than MAX_EXIF_BYTES (no camera writes such a block)."""
    block = block.removeprefix(b"Exif\0\0")
    if len(block) > MAX_EXIF_BYTES or block[:4] not in (b"II*\0", b"MM\0*"):
        return None
    order = "<" if block[:2] == b"II" else ">"
    try:
        (first,) = struct.unpack_from(order + "I", block, 4)
        (count,) = struct.unpack_from(order + "H", block, first)
        for entry in range(first + 2, first + 2 + 12 * count, 12):
            tag, kind, values = struct.unpack_from(order + "HHI", block, entry)
            if tag == EXIF_ORIENTATION and kind == 3 and values == 1:  # one SHORT, held in the entry itself
                return struct.unpack_from(order + "H", block, entry + 8)[0]
    except struct.error:
        return None
    return None


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
