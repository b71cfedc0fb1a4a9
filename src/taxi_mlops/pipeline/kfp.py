"""``taxi-mlops pipeline compile --target kfp``: the pipeline as a Kubeflow Pipelines v2 job.

Platform side: builds the compile request from ``Settings`` and the command's options and
runs ``pipeline/kfp_compile.py`` in the TFX environment, which compiles ``create_pipeline``
with TFX's ``KubeflowV2DagRunner``, writes the ``PipelineJob`` JSON and parses it back
strictly with the KFP protos. Paths in the spec point into the cluster, not this machine:
the pipeline root (a ``gs://`` bucket or a PVC mount, overridable at submission) and the data
root (``<data_root>/input`` for the prepared CSV + ``data_version.json``, and
``<data_root>/chicago_taxi/data.csv`` for the FeastPusher's tables; both are pipeline
parameters). The compiled pipeline has no champion comparison: the champion's model lives
on this machine's disk, not in the cluster.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from taxi_mlops import paths
from taxi_mlops.pipeline import runners
from taxi_mlops.settings import Settings

TARGETS = ("kfp",)
COMPILE_TIMEOUT_S = 300


class CompileError(RuntimeError):
    pass


@dataclass
class Compiled:
    path: Path
    summary: dict  # kfp_compile.executors(): tasks with their executors, parameters, root


def default_output(settings: Settings) -> Path:
    return settings.state_dir / "kfp" / "chicago-taxi-tips.json"


def _join(root: str, *parts: str) -> str:
    """Join without normalising: ``gs://bucket`` must keep its double slash."""
    return "/".join([root.rstrip("/"), *parts])


def request(settings: Settings, output: Path, pipeline_root: str | None = None,
            data_root: str | None = None, image: str | None = None) -> dict:
    """What kfp_compile needs: PipelineConfig fields, parameter defaults, image, output."""
    if settings.beam_runner == runners.DASK:
        raise CompileError("beam_runner=dask starts a local Dask cluster for a local run; in a "
                           "KFP step use direct-in-process, direct-multi-process or portable")
    pipeline_root = pipeline_root or settings.kfp_pipeline_root
    data_root = data_root or settings.kfp_data_root
    parameters = {"input_base": _join(data_root, "input"),
                  "data_path": _join(data_root, "chicago_taxi", "data.csv")}
    # The cluster's MLflow: the manifests' `mlflow` Service, unless an external one is set.
    tracking_uri = settings.mlflow_external_uri or f"http://mlflow:{settings.mlflow_port}"
    config = {
        "pipeline_root": pipeline_root,
        "metadata_path": "",  # KFP has its own ML Metadata (kfp_compile sets a scratch path)
        "module_file": str(paths.TRAINER_MODULE),  # read here only, for the code hash
        "serving_model_dir": _join(pipeline_root, "serving_model"),
        "tracking_uri": tracking_uri,
        "model_name": settings.model_name,
        # The platform env's interpreter in the image (Feast, matplotlib), beside TFX's.
        "platform_python": settings.kfp_platform_python,
        **parameters,
        **runners.config(settings),
    }
    return {"pipeline": config, "parameters": parameters,
            "image": image or settings.kfp_image, "output": str(output),
            "display_name": "chicago-taxi-tips"}


def compile_kfp(settings: Settings, output: Path | None = None, **options) -> Compiled:
    """Compile, write and check the KFP job; its summary names every task's executor."""
    from taxi_mlops.pipeline import launcher

    output = (output or default_output(settings)).resolve()
    req = request(settings, output, **options)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(req, f)
    try:
        proc = subprocess.run(
            [str(settings.resolved_pipeline_python()), "-m", "taxi_mlops.pipeline.kfp_compile",
             "compile", f.name],
            capture_output=True, text=True, env=launcher.pipeline_env(settings),
            timeout=COMPILE_TIMEOUT_S)
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stderr.splitlines()[-15:]
                         if "FutureWarning" not in line)
        raise CompileError(f"compiling for KFP failed (exit {proc.returncode}):\n{tail}")
    return Compiled(path=output, summary=json.loads(proc.stdout))


def check_spec(settings: Settings, path: Path) -> dict:
    """Parse a compiled spec strictly in the TFX environment; CompileError names the fault."""
    from taxi_mlops.pipeline import launcher

    proc = subprocess.run(
        [str(settings.resolved_pipeline_python()), "-m", "taxi_mlops.pipeline.kfp_compile",
         "check", str(path)],
        capture_output=True, text=True, env=launcher.pipeline_env(settings),
        timeout=COMPILE_TIMEOUT_S)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        raise CompileError(errors[-1] if errors else proc.stderr[-2000:])
    return json.loads(proc.stdout)


def cmd_pipeline_compile(settings: Settings, args, console) -> int:
    if args.beam_runner:
        settings = settings.model_copy(update={"beam_runner": args.beam_runner})
    try:
        compiled = compile_kfp(settings, args.output, pipeline_root=args.pipeline_root,
                               data_root=args.data_root, image=args.image)
    except CompileError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    tasks = compiled.summary["tasks"]
    console.print(f"KFP v2 pipeline ({len(tasks)} tasks, schema "
                  f"{compiled.summary['schema_version']}) written to {compiled.path}")
    console.print(f"  pipeline root {compiled.summary['pipeline_root']}; parameters "
                  + ", ".join(f"{k}={v}" for k, v in compiled.summary["parameter_defaults"].items()))
    for name, task in tasks.items():
        what = task.get("executor_class") or task["kind"]
        console.print(f"  {name}: {what}" + (f" ({task['image']})" if task.get("image") else ""))
    return 0


def register(sub, wrap) -> None:
    """``taxi-mlops pipeline compile``; ``wrap`` adapts a (settings, args, console) handler."""
    pipeline = sub.add_parser("pipeline", help="the training pipeline for other orchestrators")
    commands = pipeline.add_subparsers(dest="pipeline_cmd", required=True)
    p = commands.add_parser("compile", help="compile the TFX pipeline into a Kubeflow Pipelines "
                                            "v2 PipelineJob JSON (KubeflowV2DagRunner)")
    p.add_argument("--target", choices=TARGETS, required=True)
    p.add_argument("--output", type=Path, help="where the JSON goes (default: "
                                                "<state_dir>/kfp/chicago-taxi-tips.json)")
    p.add_argument("--pipeline-root", help="pipeline root in the cluster (gs://... or a PVC "
                                           "path; default TAXI_KFP_PIPELINE_ROOT)")
    p.add_argument("--data-root", help="folder with input/ and chicago_taxi/data.csv in the "
                                       "cluster (default TAXI_KFP_DATA_ROOT)")
    p.add_argument("--image", help="every step's image (default TAXI_KFP_IMAGE)")
    p.add_argument("--beam-runner", choices=("direct-in-process", "direct-multi-process", "portable"),
                   help="how each Beam step runs inside its container (default TAXI_BEAM_RUNNER)")
    p.set_defaults(func=wrap(cmd_pipeline_compile))
