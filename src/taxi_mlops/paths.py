"""Where the project's own files are, independent of the current directory.

Kept free of third-party imports: the TFX virtual environment imports it too.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent.parent
FEATURE_REPO = PACKAGE_DIR / "features" / "repo"
TRAINER_MODULE = PACKAGE_DIR / "pipeline" / "trainer_module" / "taxi_model.py"
PIPELINE_LOCK = PROJECT_ROOT / "requirements" / "pipeline.lock"
