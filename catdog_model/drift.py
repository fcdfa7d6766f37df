"""Does recent traffic still look like the photos production was validated on? Two-sample Kolmogorov–Smirnov
tests (scipy) of the recent predictions' p(dog), confidence and unfamiliarity score against the same values
on the version's validation photos, which training keeps with the version (in novelty.npz)."""

from __future__ import annotations

import numpy as np

MIN_RECENT = 100  # fewer predictions say little either way
P_VALUE = 0.01
MIN_STATISTIC = 0.1  # with thousands of rows, a tiny, harmless shift is "significant": ask for a visible one
NAMES = {"p_dog": "p(dog)", "confidence": "confidence", "novelty": "unfamiliarity"}


def _values(p_dog, novelty) -> dict[str, np.ndarray]:
    p_dog = np.asarray(p_dog, dtype=float)
    return {"p_dog": p_dog, "confidence": np.maximum(p_dog, 1 - p_dog), "novelty": np.asarray(novelty, dtype=float)}


def drift_report(version: str | None, reference: dict | None, recent: dict[str, list[float]]) -> dict:
    """A verdict ("drift", "no drift", "too little traffic", "no reference"), a sentence, and each test."""
    count = len(recent["p_dog"])
    if reference is None:
        return {"verdict": "no reference", "recent": count, "tests": {},
                "sentence": f"{version or 'Production'} keeps no validation reference (versions trained before "
                            "drift monitoring): retrain to get one."}
    if count < MIN_RECENT:
        return {"verdict": "too little traffic", "recent": count, "tests": {},
                "sentence": f"{count} recent predictions by {version}; the drift test needs {MIN_RECENT}."}
    expected, seen = _values(reference["p_dog"], reference["novelty"]), _values(recent["p_dog"], recent["novelty"])
    from scipy import stats  # a second of imports: not at the server's start, only once there is traffic to test

    tests = {}
    for name in NAMES:
        if len(seen[name]) < MIN_RECENT or len(expected[name]) < MIN_RECENT:
            continue
        result = stats.ks_2samp(expected[name], seen[name])
        tests[name] = {"statistic": round(float(result.statistic), 4), "p_value": float(result.pvalue),
                       "recent_mean": round(float(seen[name].mean()), 4),
                       "reference_mean": round(float(expected[name].mean()), 4),
                       "drifted": bool(result.pvalue < P_VALUE and result.statistic >= MIN_STATISTIC)}
    drifted = [name for name, test in tests.items() if test["drifted"]]
    if drifted:
        details = ", ".join(f"{NAMES[name]} (KS D = {tests[name]['statistic']:.2f}, "
                            f"p = {tests[name]['p_value']:.1g})" for name in drifted)
        sentence = (f"Drift: the last {count} predictions by {version} differ from its validation photos in "
                    f"{details}. Look at what is being sent; retraining on recent photos may help.")
    else:
        sentence = (f"No drift: the last {count} predictions by {version} look like its validation photos "
                    f"(Kolmogorov–Smirnov, p ≥ {P_VALUE} or D < {MIN_STATISTIC} for "
                    f"{', '.join(NAMES[name] for name in tests)}).")
    return {"verdict": "drift" if drifted else "no drift", "recent": count, "tests": tests, "sentence": sentence}
