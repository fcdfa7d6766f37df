"""Start to ready, catdog against the minimal Gradio app on the same machine: starts alternated, so that a slow
minute slows both, and the median of each. Wall-clock seconds until /health says ready, and the CPU seconds the
server has used by then (steadier where other work shares the machine).

    python -m bench.startup [--starts 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.loadtest import App, ratio
from catdog_model.config import PROJECT_ROOT

SERVERS = {"minimal_gradio": ("-m", "bench.minimal_apps", "gradio"), "catdog": ("app.py",)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=7, help="starts of each server")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    arguments = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="catdog-startup-"))
    shutil.copytree(PROJECT_ROOT / "models", work / "models", ignore=shutil.ignore_patterns(".lock"))
    # As a first start from a fresh clone: no background embedding (nothing to embed), no admin token.
    env = {**os.environ, "CATDOG_MODELS_DIR": str(work / "models"), "CATDOG_DATA_DIR": str(work / "data"),
           "CATDOG_PREPARE_EMBEDDINGS": "0", "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("CATDOG_ADMIN_TOKEN", None)
    starts: dict[str, dict[str, list[float]]] = {name: {"ready_s": [], "cpu_s": []} for name in SERVERS}
    try:
        for _ in range(arguments.starts):
            for name, command in SERVERS.items():
                app = App(env, command)
                starts[name]["cpu_s"].append(round(app.cpu_seconds(), 2))
                starts[name]["ready_s"].append(round(app.ready_seconds, 2))
                app.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: {key: round(statistics.median(values), 2) for key, values in measured.items()}
               for name, measured in starts.items()}
    result = {"starts": starts, "medians": medians,
              "ratios": {key: ratio(medians["catdog"][key], medians["minimal_gradio"][key])
                         for key in ("ready_s", "cpu_s")}}
    if arguments.json:
        print(json.dumps(result))
        return
    for name, median in medians.items():
        print(f"{name:15} ready in {median['ready_s']:.2f} s, {median['cpu_s']:.2f} CPU s "
              f"(medians of {arguments.starts})")
    print(f"catdog / minimal Gradio: {result['ratios']['ready_s']:.2f} × to ready, "
          f"{result['ratios']['cpu_s']:.2f} × CPU")


if __name__ == "__main__":
    main()
