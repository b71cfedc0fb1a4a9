"""Feast's classes without typeguard's instrumentation; everyone else's @typechecked intact.
Each case runs in a fresh interpreter: the filter must be in place before Feast is imported."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
if sys.argv[1] == "skip":
    from taxi_mlops.features.feast_runtime import skip_feast_type_checks
    assert skip_feast_type_checks()
    assert skip_feast_type_checks()  # idempotent
import warnings
warnings.simplefilter("ignore")
import typeguard
from feast import Entity

try:
    Entity(name=1, join_keys=["trip"])
    print("feast: unchecked")
except typeguard.TypeCheckError:
    print("feast: checked")

@typeguard.typechecked
def double(x: int) -> int:
    return 2 * x

try:
    double("a")
    print("ours: unchecked")
except typeguard.TypeCheckError:
    print("ours: checked")
"""


def probe(folder, mode: str) -> list[str]:
    script = folder / "probe.py"  # a file: typeguard instruments from the source
    script.write_text(PROBE)
    out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")[:2]


def test_feast_classes_are_not_instrumented_and_other_code_still_is(tmp_path):
    assert probe(tmp_path, "skip") == ["feast: unchecked", "ours: checked"]


def test_without_the_filter_feast_checks_its_arguments(tmp_path):
    """The probe can tell: Feast's own decorator rejects the wrong type."""
    assert probe(tmp_path, "plain") == ["feast: checked", "ours: checked"]


def test_too_late_once_feast_is_imported():
    code = ("import feast\nfrom taxi_mlops.features.feast_runtime import skip_feast_type_checks\n"
            "print(skip_feast_type_checks())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
