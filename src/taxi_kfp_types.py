"""Our artifact types under the names Kubeflow Pipelines v2 can carry.

KFP v2 names a custom artifact type by a schema title ``<namespace>.<Class>`` (one dot) and
the step's container imports that path to rebuild the artifact. Our types live deeper
(``taxi_mlops.pipeline.components.artifacts``), so this top-level module (on the pipeline's
PYTHONPATH, in the pipeline image too) re-exports them under their ML Metadata names;
``taxi_mlops.pipeline.kfp_compile`` titles them ``taxi_kfp_types.<name>``. Local runs keep
the plain names in ML Metadata.
"""

from taxi_mlops.pipeline.components.artifacts import FeatureTables as FeastFeatureTables
from taxi_mlops.pipeline.components.artifacts import RegisteredModel as MlflowModelVersion

__all__ = ["FeastFeatureTables", "MlflowModelVersion"]
