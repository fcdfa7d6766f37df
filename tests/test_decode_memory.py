"""What a decode really holds, measured: for every mode Pillow opens, the worst case's peak memory stays within
what the decode budget charges for it (CATDOG_DECODE_MEMORY_MB bounds the sum of the charges)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catdog_model.config import PROJECT_ROOT

SIDE = 3000
SLACK_BYTES = 3 * 2**20  # the interpreter's own allocations while it decodes

MEASURE = r"""
import json, sys
from catdog_model.images import ImageLimits, drafted_cost, load_image, _open

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

limits = ImageLimits(max_pixels=10**9, decode_bytes=2**40)
results = []
for argument in sys.argv[1:]:
    path, size, fit = argument.split("|")
    size, fit = int(size), fit == "fit"
    data = open(path, "rb").read()
    image = _open(data, limits.max_pixels)
    charged = drafted_cost(image, size, fit)
    mode = image.mode
    del image
    open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
    before = rss("VmRSS")
    load_image(data, size=size, limits=limits, fit=fit)
    results.append({"file": argument, "mode": mode, "charged": charged, "used": rss("VmHWM") - before})
print(json.dumps(results))
"""


def worst_cases(folder: Path) -> list[Path]:
    """For each mode, an image large enough to be shrunk; and, for the modes with the costliest conversions, one
    just too small to be shrunk (converted at full size), and a long strip."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (SIDE // 40, SIDE // 40, 3), dtype=np.uint8)).resize((SIDE, SIDE))
    palette = Image.fromarray(rng.integers(0, 64, (SIDE // 40, SIDE // 40), dtype=np.uint8)).resize(
        (SIDE, SIDE), Image.Resampling.NEAREST)
    palette.putpalette(rng.integers(0, 255, 64 * 3, dtype=np.uint8).tobytes())
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    images = {
        "1.png": noise.convert("1"), "L.png": noise.convert("L"), "P.png": palette,
        "P-transparent.png": transparent, "P-transparent.gif": transparent, "LA.png": noise.convert("LA"),
        "RGB.png": noise, "RGBA.png": noise.convert("RGBA"), "RGBA.webp": noise.convert("RGBA"),
        "RGB.webp": noise, "RGB.bmp": noise, "CMYK.tif": noise.convert("CMYK"), "CMYK.jpg": noise.convert("CMYK"),
        "RGB-progressive.jpg": noise, "LAB.tif": noise.convert("LAB"),
        "I16.png": Image.fromarray(rng.integers(0, 65535, (SIDE, SIDE)).astype(np.uint16)),
        "I16.tif": Image.fromarray(rng.integers(0, 65535, (SIDE, SIDE)).astype(np.uint16)),
        "I.tif": Image.fromarray(rng.integers(0, 2**20, (SIDE, SIDE)).astype(np.int32)),
        "F.tif": Image.fromarray(rng.random((SIDE, SIDE)).astype(np.float32)),
        "RGBA-unshrunk.png": noise.convert("RGBA").resize((1151, 1151)),
        "P-transparent-unshrunk.png": transparent.resize((1151, 1151)),
        "RGBA-strip.png": Image.fromarray(np.tile(np.asarray(noise.convert("RGBA"))[:16, :1000], (1, 600, 1))),
    }
    paths = []
    for name, image in images.items():
        path = folder / name
        options = {"progressive": True} if "progressive" in name else {"compress_level": 1} if ".png" in name else {}
        image.save(path, **options)
        paths.append(path)
    return paths


@pytest.mark.heavy
def test_every_modes_worst_case_stays_within_what_the_budget_charges(tmp_path):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("measuring a peak needs Linux's /proc/self/clear_refs")
    files = worst_cases(tmp_path)
    # As the model reads them (a square of 288 px), and as uploads are stored (at most 1,024 px, aspect kept).
    cases = [f"{path}|288|square" for path in files] + [f"{path}|1024|fit" for path in files]
    measured = subprocess.run([sys.executable, "-c", MEASURE, *cases], capture_output=True, text=True,
                              cwd=PROJECT_ROOT, env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": ""}, check=True)
    results = json.loads(measured.stdout)
    assert len(results) == len(cases)
    over = [f"{Path(result['file']).name} ({result['mode']}): used {result['used'] / 2**20:.1f} MB, charged "
            f"{result['charged'] / 2**20:.1f} MB" for result in results
            if result["used"] > result["charged"] + SLACK_BYTES]
    assert not over, over
    # A charge is not a blanket: the costliest cases really use most of what they are charged.
    largest = max(results, key=lambda result: result["used"])
    assert largest["used"] > largest["charged"] / 2
