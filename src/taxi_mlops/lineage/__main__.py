"""``python -m taxi_mlops.lineage``: the prediction-store worker (``lineage/consumer.py``)."""

import sys

from taxi_mlops.lineage.consumer import main

sys.exit(main())
