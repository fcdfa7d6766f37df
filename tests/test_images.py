"""Every way an image can arrive, good or bad: a correct RGB array or an InvalidImage with a sentence."""

from __future__ import annotations

import contextlib
import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings as hypothesis_settings, strategies
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from catdog_model.images import ImageLimits, InvalidImage, MemoryBudget, load_image


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width×height, with almost no pixel data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def half_red_half_blue(width=64, height=48) -> Image.Image:
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(array)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"these are the notes of a meeting, not a photo\n" * 10, "not an image"),
    (bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)), "not an image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><circle r="40"/></svg>', "not an image"),
])
def test_non_images_are_rejected_with_a_sentence(data, message):
    with pytest.raises(InvalidImage, match=message):
        load_image(data)


def test_truncated_jpeg_is_rejected():
    data = encode(half_red_half_blue(400, 300), "JPEG")
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_decompression_bomb_is_rejected_before_decoding():
    with pytest.raises(InvalidImage, match="pixels"):
        load_image(png_header_only(20000, 20000))


def test_pixel_limit_is_configurable():
    data = encode(half_red_half_blue(200, 100), "PNG")
    with pytest.raises(InvalidImage, match="200×100 pixels, over the limit of 10,000"):
        load_image(data, limits=ImageLimits(max_pixels=10_000))


@pytest.mark.parametrize("size", [(1, 1), (15, 200)])
def test_tiny_images_are_rejected(size):
    with pytest.raises(InvalidImage, match="at least 16 pixels"):
        load_image(encode(Image.new("RGB", size, "white"), "PNG"))


def test_rgb_jpeg_from_bytes_path_file_pil_and_array(tmp_path):
    image = half_red_half_blue()
    data = encode(image, "PNG")
    path = tmp_path / "picture.png"
    path.write_bytes(data)
    expected = np.asarray(image)
    for source in (data, path, str(path), io.BytesIO(data), image, expected):
        result = load_image(source)
        assert result.dtype == np.uint8 and result.shape == (48, 64, 3)
        np.testing.assert_array_equal(result, expected)


def test_missing_path_is_an_invalid_image(tmp_path):
    with pytest.raises(InvalidImage, match="no file"):
        load_image(tmp_path / "absent.jpg")


def test_resize_gives_square_rgb():
    result = load_image(encode(half_red_half_blue(640, 480), "JPEG"), size=224)
    assert result.shape == (224, 224, 3)
    assert result[112, 20, 0] > 200 and result[112, 200, 2] > 200  # red stays left, blue right


def test_grayscale_palette_and_cmyk_become_rgb():
    gray = Image.new("L", (32, 32), 128)
    palette = half_red_half_blue().convert("P", palette=Image.Palette.ADAPTIVE)
    cmyk = half_red_half_blue().convert("CMYK")
    assert load_image(encode(gray, "PNG"))[0, 0].tolist() == [128, 128, 128]
    assert load_image(encode(palette, "PNG"))[0, 0].tolist() == [255, 0, 0]
    red = load_image(encode(cmyk, "JPEG", quality=95))[24, 5]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_sixteen_bit_png_is_scaled_not_clipped():
    array = np.full((20, 20), 32768, dtype=np.uint16)  # mid-gray in 16 bits
    result = load_image(encode(Image.fromarray(array), "PNG"))
    assert 120 <= result[0, 0, 0] <= 135


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 10, 20))
    result = load_image(encode(rgba, "PNG"))
    assert result[10, 2].tolist() == [255, 0, 0] and result[10, 15].tolist() == [255, 255, 255]


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (32, 32), color) for color in ("red", "blue", "green")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    first = load_image(data)[16, 16]
    assert first[0] > 200 and first[2] < 50


def test_exif_orientation_is_applied():
    image = half_red_half_blue(64, 48)  # landscape, red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    result = load_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert result.shape == (64, 48, 3)  # shown upright: portrait
    assert result[5, 24, 0] > 200 and result[60, 24, 2] > 200  # red now on top, blue below


def test_a_30_megapixel_photo_works_and_is_decoded_at_reduced_size(monkeypatch):
    big = Image.fromarray(np.kron(np.asarray(half_red_half_blue(64, 48)), np.ones((100, 100, 1), np.uint8)))
    data = encode(big, "JPEG", quality=85)  # 6400×4800 = 30.7 megapixels
    decoded_sizes = []
    original_load = JpegImageFile.load

    def recording_load(image):
        decoded_sizes.append(image.size)
        return original_load(image)

    monkeypatch.setattr(JpegImageFile, "load", recording_load)
    result = load_image(data, size=224)
    assert result.shape == (224, 224, 3) and result[100, 10, 0] > 200 and result[100, 200, 2] > 200
    assert decoded_sizes and max(decoded_sizes[0]) <= 6400 // 8  # draft mode: decoded at 1/8 scale


@hypothesis_settings(max_examples=300, deadline=None)
@given(strategies.binary(max_size=4096))
def test_arbitrary_bytes_give_an_image_or_invalid_image(data):
    try:
        result = load_image(data, size=32)
    except InvalidImage as error:
        assert str(error)
    else:
        assert result.shape == (32, 32, 3)


@hypothesis_settings(max_examples=100, deadline=None)
@given(strategies.binary(min_size=1, max_size=2000), strategies.integers(min_value=20, max_value=5000))
def test_corrupted_real_jpegs_give_an_image_or_invalid_image(garbage, position):
    data = bytearray(encode(half_red_half_blue(), "JPEG"))
    position = position % len(data)
    data[position:position + len(garbage)] = garbage
    try:
        result = load_image(bytes(data), size=32)
    except InvalidImage as error:
        assert str(error)
    else:
        assert result.shape == (32, 32, 3) and result.dtype == np.uint8


def test_the_minimum_side_is_configurable():
    data = encode(half_red_half_blue(50, 50), "PNG")
    assert load_image(data).shape == (50, 50, 3)
    with pytest.raises(InvalidImage, match="each side must be at least 100 pixels"):
        load_image(data, limits=ImageLimits(min_side=100))


def test_the_decoding_budget_counts_channels_not_just_pixels():
    limits = ImageLimits(decode_bytes=10 * 2**20)
    gray = encode(Image.new("L", (2000, 2000), 90), "PNG")  # 4 MB decoded
    # 16 MB decoded, and 16 MB more for the premultiplied copy that shrinking it makes
    transparent = encode(Image.new("RGBA", (2000, 2000), (9, 9, 9, 9)), "PNG")
    assert load_image(gray, size=64, limits=limits).shape == (64, 64, 3)
    with pytest.raises(InvalidImage, match="would take 31 MB; the limit is 10 MB"):
        load_image(transparent, size=64, limits=limits)


def test_concurrent_large_decodes_share_one_memory_budget():
    class RecordingBudget(MemoryBudget):
        peak = 0

        @contextlib.contextmanager
        def reserve(self, amount):
            with super().reserve(amount):
                RecordingBudget.peak = max(RecordingBudget.peak, self.in_use)
                time.sleep(0.05)
                yield

    data = encode(Image.new("RGBA", (1500, 1500), (200, 10, 10, 255)), "PNG")  # 9 MB decoded each
    limits = ImageLimits(decode_bytes=20 * 2**20, budget=RecordingBudget(20 * 2**20, wait_seconds=600))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: load_image(data, size=32, limits=limits), range(8)))
    assert all(result[0, 0].tolist() == [200, 10, 10] for result in results)
    assert 0 < RecordingBudget.peak <= 20 * 2**20  # two at a time, never eight
    assert limits.budget.in_use == 0


def test_a_large_transparent_png_is_shrunk_right_after_decoding():
    image = Image.new("RGBA", (4000, 3000), (0, 0, 255, 255))
    image.paste((255, 0, 0, 255), (0, 0, 2000, 3000))
    result = load_image(encode(image, "PNG"), size=64)
    assert result.shape == (64, 64, 3) and result[32, 5].tolist() == [255, 0, 0] and result[32, 60].tolist() == [0, 0, 255]


def test_formats_whose_header_can_lie_about_the_size_are_refused():
    with pytest.raises(InvalidImage, match="not an image that can be read"):
        load_image(encode(Image.new("RGB", (64, 64), "red"), "ICO"))


def test_a_progressive_jpeg_is_charged_for_its_full_size_coefficients():
    photo = half_red_half_blue(2000, 2000)
    limits = ImageLimits(decode_bytes=20 * 2**20)
    assert load_image(encode(photo, "JPEG"), size=64, limits=limits).shape == (64, 64, 3)
    with pytest.raises(InvalidImage, match="the limit is 20 MB"):
        load_image(encode(photo, "JPEG", progressive=True), size=64, limits=limits)


def test_a_long_thin_image_is_shrunk_along_its_long_side():
    result = load_image(encode(Image.new("RGBA", (300, 20000), (0, 200, 0, 255)), "PNG"), size=64)
    assert result.shape == (64, 64, 3) and result[32, 32].tolist() == [0, 200, 0]


def test_the_exif_orientation_turns_the_photo_without_rewriting_its_exif(monkeypatch):
    """Pillow's exif_transpose re-serialises the whole EXIF block: 6,000 padding tags (6 MB) cost 20 s of CPU.
    Only the orientation tag is read now; rewriting the block is a failure here."""
    from bench.attacks import exif_block

    def no_rewriting(self, offset=8):
        raise AssertionError("the EXIF block was re-serialised")

    turned = {format: encode(half_red_half_blue(64, 48), format, exif=exif_block(orientation=6))
              for format in ("JPEG", "PNG", "WEBP")}
    bomb = encode(half_red_half_blue(64, 48), "PNG", exif=exif_block(orientation=8, padding_tags=6000))
    assert len(bomb) > 6_000_000
    monkeypatch.setattr(Image.Exif, "tobytes", no_rewriting)
    for format, data in turned.items():
        photo = load_image(data)
        assert photo.shape == (64, 48, 3), format  # turned a quarter: red on top, blue below
        assert photo[5, 24, 0] > 200 and photo[60, 24, 2] > 200, format
    assert load_image(bomb, size=32).shape == (32, 32, 3)  # a block no camera writes: its orientation is ignored


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("kind", ["JPEG comment markers", "PNG chunks before the pixels", "PNG chunks after them",
                                  "GIF comment blocks"])
def test_a_file_of_millions_of_empty_metadata_blocks_is_refused_without_parsing_them_all(kind):
    """Pillow's parsers loop in Python over markers, chunks and blocks: 50 MB of empty ones took 20-35 s of CPU
    and decoded to a 64×48 picture. Reads are counted: such a file is refused after a few thousand."""
    small = Image.new("RGB", (64, 48), "gray")
    jpeg, png = encode(small, "JPEG"), encode(small, "PNG")
    gif = encode(small.convert("P"), "GIF")
    files = {"JPEG comment markers": jpeg[:2] + b"\xff\xfe\x00\x02" * 3_000_000 + jpeg[2:],
             "PNG chunks before the pixels": png[:33] + png_chunk(b"abCd", b"") * 1_000_000 + png[33:],
             "PNG chunks after them": png[:-12] + png_chunk(b"tEXt", b"a\0b") * 1_000_000 + png[-12:],
             "GIF comment blocks": gif[:19] + b"\x21\xfe\x01a\x00" * 2_000_000 + gif[19:]}
    with pytest.raises(InvalidImage, match="more metadata blocks than any photo has"):
        load_image(files[kind], size=32)


@pytest.mark.heavy
def test_real_photos_of_every_format_stay_well_within_the_read_count():
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 256, (1500, 2000, 3), np.uint8))
    for format, options in [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("GIF", {}),
                            ("WEBP", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_deflate"})]:
        assert load_image(encode(photo, format, **options), size=64).shape == (64, 64, 3), format


def test_a_decode_that_runs_past_its_cpu_time_is_stopped(monkeypatch):
    import catdog_model.images as images

    monkeypatch.setattr(images, "DECODE_CPU_SECONDS", -1.0)  # every decode is already late
    with pytest.raises(InvalidImage, match="s of CPU, so it was stopped"):
        load_image(encode(half_red_half_blue(), "PNG"))


def test_a_busy_budget_refuses_a_large_decode_after_its_wait_and_lets_small_ones_through():
    from catdog_model.images import ServerBusy

    budget = MemoryBudget(64 * 2**20, wait_seconds=0)
    with budget.reserve(60 * 2**20):  # a large image is being decoded
        with pytest.raises(ServerBusy, match="busy decoding other large images"):
            with budget.reserve(8 * 2**20):  # too large for the small images' reserve
                pass
        with budget.reserve(4 * 2**20), budget.reserve(4 * 2**20):  # photos never wait behind it
            assert budget.reserve_in_use == 8 * 2**20
    assert budget.in_use == budget.reserve_in_use == 0



def test_decodes_under_one_deadline_wait_for_memory_once_in_all():
    """A batch of a hundred large images on a busy server waits as long as one photo would, not a hundred times."""
    from catdog_model.images import ServerBusy, waiting_at_most

    budget = MemoryBudget(64 * 2**20, wait_seconds=600)
    asked = []
    wait_for = budget._condition.wait_for
    with budget.reserve(60 * 2**20), waiting_at_most(0.1):
        budget._condition.wait_for = lambda predicate, timeout: asked.append(timeout) or wait_for(predicate, timeout)
        for _ in range(100):
            with pytest.raises(ServerBusy):
                with budget.reserve(8 * 2**20):
                    pass
    assert asked and sum(asked) <= 0.1


def tiff_block(tags: list[tuple[int, int, int, int]], sub_directory: list[tuple[int, int, int, int]] = (),
               tail: bytes = b"") -> bytes:
    """A little-endian TIFF structure: its first directory's (tag, type, count, value) entries, then, when
    given, an EXIF directory (pointed to by tag 0x8769) with its own entries, then `tail`."""
    first = 8
    sub = first + 2 + 12 * (len(tags) + bool(sub_directory)) + 4
    entries = list(tags) + ([(0x8769, 4, 1, sub)] if sub_directory else [])
    block = b"II*\0" + struct.pack("<I", first) + struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", *entry) for entry in entries) + bytes(4)
    if sub_directory:
        block += struct.pack("<H", len(sub_directory)) + b"".join(
            struct.pack("<HHII", *entry) for entry in sub_directory) + bytes(4)
    return block + tail


def with_exif(jpeg: bytes, block: bytes) -> bytes:
    """The JPEG without its JFIF segment (so Pillow reads the resolution from EXIF) and with block as EXIF."""
    segment = b"Exif\0\0" + block
    jfif_end = 4 + struct.unpack_from(">H", jpeg, 4)[0]
    return b"\xff\xd8\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + jpeg[jfif_end:]


def test_metadata_that_pillow_would_copy_over_and_over_is_refused_before_it_reads_it():
    """From the second adversarial review: a 64 KB JPEG whose EXIF block holds 5,300 tags, each pointing at
    the whole block (Pillow copies every tag's data as it opens the file: +324 MB), and a TIFF whose EXIF
    sub-directory holds a thousand tags of a megabyte each (read after the pixels: +962 MB). An ordinary
    EXIF block with an orientation still turns the photo."""
    photo = encode(half_red_half_blue(64, 48), "JPEG")
    size = 8 + 2 + 12 * 5301 + 4
    bomb = with_exif(photo, tiff_block([(0x1000 + index, 7, size - 8, 8) for index in range(5300)] +
                                       [(0x0112, 3, 1, 6)]))
    assert len(bomb) < 70_000
    pixels = bytes([150, 100, 50]) * 64 * 48
    tiff = tiff_block([(256, 4, 1, 64), (257, 4, 1, 48), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, 0),
                       (277, 3, 1, 3), (278, 4, 1, 48), (279, 4, 1, len(pixels))],
                      [(0x1000 + index, 7, 1_000_000, 8) for index in range(1000)])
    for data, refusal in [(bomb, "EXIF block holds 5,301 tags"),
                          (tiff + pixels, "TIFF file's metadata holds 1,009 tags")]:
        with pytest.raises(InvalidImage, match=refusal):
            load_image(data, size=32)
    turned = with_exif(photo, tiff_block([(0x0112, 3, 1, 6), (0x010F, 2, 6, 26)], tail=b"Canon\0"))
    assert load_image(photo, size=32, fit=True).shape[:2] == (24, 32)
    assert load_image(turned, size=32, fit=True).shape[:2] == (32, 24)


def test_files_whose_bookkeeping_costs_more_than_their_pixels_are_refused_before_pillow_parses_them():
    """From the adversarial review: a 1 MB TIFF whose thousand tags all point at the same megabyte (Pillow copied
    each: +1.9 GB), a JPEG of hundreds of tiny refinement scans (11 s of CPU for 65 KB), a run-length BMP whose
    decoder overshoots its buffer (+1.6 GB for 1 KB), and a baseline JPEG of one scan per component (its
    coefficients are kept at full size, whatever the draft scale)."""
    many_tags = b"II*\0" + struct.pack("<IH", 8, 1000) + b"".join(
        struct.pack("<HHII", 0xD000 + index, 2, 1_000_000, 12_100) for index in range(1000)) + bytes(1_000_000)
    progressive = encode(half_red_half_blue(256, 256), "JPEG", progressive=True)
    first_scan = progressive.index(b"\xff\xda")
    many_scans = (progressive[:first_scan] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00\x00" * 150 +
                  b"\xff\xd9")
    rle = bytearray(encode(Image.new("P", (64, 64)), "BMP"))
    rle[30:34] = struct.pack("<I", 1)  # BI_RLE8
    for data, refusal in [(many_tags, "TIFF file's metadata holds 1,000 tags"),
                          (many_scans, "over 100 scans"), (bytes(rle), "Run-length-encoded BMP")]:
        with pytest.raises(InvalidImage, match=refusal):
            load_image(data, size=32)
    assert load_image(progressive, size=32).shape == (32, 32, 3)  # ten scans: a photo
