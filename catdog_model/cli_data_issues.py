"""Find likely label errors, near duplicates and outliers in folders of cats/ and dogs/ (and the app's uploads):
a ranked table (CSV and JSON) and a contact sheet of the top suspects. Decisions already kept in
CATDOG_DATA_DIR/data_decisions.json are applied first, as training applies them.

    python -m catdog data-issues --data-dir ../shared/data/cats_vs_dogs --data-dir ../shared/data/cats_vs_dogs_more
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

from .atomic import write_atomically
from .cli import ProgressBars, open_version, user_errors
from .data import Dataset, deduplicate, load_folders
from .data_decisions import DataDecisions
from .data_issues import DEFAULT_FOLDS, contact_sheet, find_data_issues, refuse_too_few_photos, summary
from .hub import PRODUCTION
from .images import ImageLimits
from .serving import ModelLoadError
from .training import embed_examples, embedding_cache

TABLE_FILE, REPORT_FILE, SHEET_FILE = "data_issues.csv", "data_issues.json", "contact_sheet.png"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="catdog data-issues", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", action="append", default=[],
                        help="folder with class subfolders cats/ and dogs/; repeat for more")
    parser.add_argument("--uploads", action="store_true", help="the app's confirmed uploads (CATDOG_DATA_DIR) too")
    parser.add_argument("--version", default=PRODUCTION,
                        help="whose backbone embeds the photos, through its serving export (default: production)")
    parser.add_argument("--out", default="data-issues", help="folder for the table, report and contact sheet")
    parser.add_argument("--top", type=int, default=20, help="suspects on the contact sheet and printed")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="heads fitted, each on the other folds")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    arguments = parser.parse_args(argv)
    if not arguments.data_dir and not arguments.uploads:
        parser.error("give --data-dir (repeatable), --uploads, or both")
    if arguments.folds < 2:
        parser.error("--folds needs at least 2: each head is fitted on the other folds")
    if arguments.top < 0:
        parser.error("--top needs 0 or more")
    if Path(arguments.out).exists() and not Path(arguments.out).is_dir():
        parser.error(f"--out {arguments.out} is a file: give a folder for the table, report and contact sheet")
    return arguments


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    with user_errors():
        from .served_backbone import ServedBackbone
        from .uploads import UploadStore

        settings, hub, version = open_version(arguments.version)
        try:
            backbone = ServedBackbone(hub.download(version), settings.backbone_batch_size)
        except ModelLoadError as error:
            raise ModelLoadError(f"{error} Choose a version with one: --version vN.") from None
        examples = load_folders(arguments.data_dir).examples if arguments.data_dir else []
        if arguments.uploads:
            examples += UploadStore(settings.data_dir / "uploads", ImageLimits.from_settings(settings)).dataset().examples
        dataset = DataDecisions(settings.data_dir).apply(deduplicate(examples))
        refuse_too_few_photos(dataset.examples, arguments.folds)  # before minutes of embedding, not after
        progress = ProgressBars()
        embeddings, kept, rejected = embed_examples(backbone, dataset.examples, embedding_cache(settings),
                                                    ("original",), progress)
        progress.close()
        suspects = find_data_issues(kept, embeddings["original"], folds=arguments.folds)
        report = {"version": version, "backbone": backbone.spec.id,
                  "data": " + ".join(arguments.data_dir + ["uploads"] * arguments.uploads),
                  **summary(suspects), "rejected": rejected, "decisions_applied": dataset.decisions,
                  "seconds": round(time.perf_counter() - started, 1),
                  "files": write_report(Path(arguments.out), suspects, Dataset(kept), arguments.top)}
        report["suspects"] = [suspect.as_row() for suspect in suspects if suspect.flagged]
    if arguments.json:
        print(json.dumps(report))
        return
    print(f"{report['photos']:,} photos ({report['data']}), embedded by {version}'s backbone: {report['flagged']} "
          f"flagged — {report['label']} label errors, {report['near_duplicate']} near duplicates, "
          f"{report['outlier']} outliers — in {report['seconds']} s")
    for suspect in suspects[:arguments.top]:
        finding = suspect.issue if suspect.flagged else f"({suspect.issue}, not flagged)"
        print(f"  #{suspect.rank:<3} {finding:30} {suspect.score:8.4f}  given {suspect.given_label}, "
              f"p = {suspect.p_given:.3f}  {suspect.source}")
    for path in report["files"]:
        print(f"  {path}")


def write_report(folder: Path, suspects, dataset: Dataset, top: int) -> list[str]:
    """The ranked table of every photo (CSV), the flagged ones with the summary (JSON), the contact sheet (PNG)."""
    rows = [suspect.as_row() for suspect in suspects]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(folder / TABLE_FILE, table.getvalue().encode())
    write_atomically(folder / REPORT_FILE, json.dumps({**summary(suspects),
                                                        "suspects": [row for row in rows if row["flagged"]]},
                                                       indent=1).encode())
    sheet = io.BytesIO()
    contact_sheet(suspects[:top], {example.sha256: example for example in dataset.examples}).save(sheet, "PNG")
    write_atomically(folder / SHEET_FILE, sheet.getvalue())
    return [str(folder / name) for name in (TABLE_FILE, REPORT_FILE, SHEET_FILE)]


if __name__ == "__main__":
    main(sys.argv[1:])
