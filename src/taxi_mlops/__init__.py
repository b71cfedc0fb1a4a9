"""taxi_mlops: the Chicago Taxi tip problem carried through a complete MLOps platform."""

__version__ = "0.1.0"
