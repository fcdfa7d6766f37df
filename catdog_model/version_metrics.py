"""What training measured of each version — its metrics.json — read through either hub backend, which stores the
file and knows nothing of what it says."""

from __future__ import annotations

import json

from .hub import PRODUCTION, HubError, ModelHub
from .layout import METRICS_FILE


def read_metrics(hub: ModelHub, revision: str = PRODUCTION) -> dict:
    """The version's metrics.json: its test and validation metrics, its data split, how it was trained."""
    path = hub.download(revision) / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise HubError(f"Cannot read {METRICS_FILE} of {revision} in {hub.name} ({error}).") from None


def metrics_table(hub: ModelHub) -> list[dict]:
    """Each version with its creation date, test and validation metrics and whether it is production; a
    version whose metrics.json cannot be read is listed without them."""
    production = hub.production()
    rows = []
    for version in hub.versions():
        try:
            metrics = read_metrics(hub, version)
        except HubError:
            metrics = {}
        rows.append({"version": version, "created_at": metrics.get("created_at"),
                     "production": version == production, "test": metrics.get("test", {}),
                     "validation": metrics.get("validation", {})})
    return rows
