"""Transform and Trainer code of the tip model (TFX module file).

Imported by name (``pipeline.USER_MODULE``); its hash and the hashes of the project modules
it imports are Transform's and Trainer's cache key (``pipeline.user_code_version``). It runs
inside the TFX environment (Python 3.10, tf_keras) and exports two signatures:
``serving_default`` takes the raw named inputs the model server receives over the v2
protocol; ``serving_tf_example`` takes serialized tf.Examples for the Evaluator. The CSV's
slice-only columns (``slicing.SLICE_COLUMNS``, for TFMA) are in the schema but read by
neither ``preprocessing_fn`` nor a signature, so they are not model inputs.
"""

import json
import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs  # not tfx.v1: see pipeline.py
from tfx_bsl.public import tfxio

from taxi_mlops.features import schema
from taxi_mlops.pipeline import slicing

VOCAB_SIZE = 1000
OOV_BUCKETS = 1
LAT_LON_BUCKETS = 10


def _t(name):
    return name + "_xf"


def _dense(x, default):
    """Missing values arrive as SparseTensors from the CSV; serving sends dense tensors."""
    if isinstance(x, tf.sparse.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default
        )
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs):
    outputs = {}
    for name in ("trip_miles", "fare", "trip_seconds"):
        value = tf.cast(_dense(inputs[name], tf.cast(0, inputs[name].dtype)), tf.float32)
        outputs[_t(name)] = tft.scale_to_z_score(tf.math.log1p(tf.maximum(value, 0.0)))
    for name in ("pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude"):
        value = tf.cast(_dense(inputs[name], tf.cast(0, inputs[name].dtype)), tf.float32)
        outputs[_t(name)] = tft.bucketize(value, LAT_LON_BUCKETS)
    for name, size in schema.INT_CATEGORICAL_FEATURES.items():
        value = tf.cast(_dense(inputs[name], tf.cast(0, inputs[name].dtype)), tf.int64)
        outputs[_t(name)] = tf.clip_by_value(value, 0, size - 1)
    for name in schema.VOCAB_FEATURES:
        value = _dense(inputs[name], tf.cast("" if inputs[name].dtype == tf.string else -1,
                                             inputs[name].dtype))
        if value.dtype != tf.string:
            value = tf.strings.as_string(value)
        outputs[_t(name)] = tft.compute_and_apply_vocabulary(
            value, top_k=VOCAB_SIZE, num_oov_buckets=OOV_BUCKETS, vocab_filename=name
        )
    for name in schema.STORE_FEATURES:
        value = tf.cast(_dense(inputs[name], tf.cast(0, inputs[name].dtype)), tf.float32)
        if name.endswith("_trip_count"):
            value = tf.math.log1p(value)
        outputs[_t(name)] = tft.scale_to_z_score(value)
    if schema.LABEL in inputs:
        outputs[schema.LABEL] = tf.cast(_dense(inputs[schema.LABEL], tf.cast(0, inputs[schema.LABEL].dtype)), tf.int64)
    return outputs


def _categorical_sizes(tf_transform_output):
    sizes = {_t(n): size for n, size in schema.INT_CATEGORICAL_FEATURES.items()}
    for name in ("pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude"):
        sizes[_t(name)] = LAT_LON_BUCKETS + 1
    for name in schema.VOCAB_FEATURES:
        sizes[_t(name)] = tf_transform_output.vocabulary_size_by_name(name) + OOV_BUCKETS
    return sizes


def _build_model(tf_transform_output, hidden_units, learning_rate=0.001):
    """No hidden units is the ``linear`` family: a logistic regression on the same inputs."""
    sizes = _categorical_sizes(tf_transform_output)
    dense_names = [_t(n) for n in ("trip_miles", "fare", "trip_seconds")] + [
        _t(n) for n in schema.STORE_FEATURES
    ]
    inputs, parts = {}, []
    for name in dense_names:
        inputs[name] = tf.keras.layers.Input(shape=(1,), name=name, dtype=tf.float32)
        parts.append(inputs[name])
    for name, size in sizes.items():
        inputs[name] = tf.keras.layers.Input(shape=(1,), name=name, dtype=tf.int64)
        parts.append(tf.keras.layers.CategoryEncoding(num_tokens=size, output_mode="one_hot")(inputs[name]))
    x = tf.keras.layers.concatenate(parts)
    for units in hidden_units:
        x = tf.keras.layers.Dense(units, activation="relu")(x)
    output = tf.keras.layers.Dense(1, activation="sigmoid", name="tip_probability")(x)
    model = tf.keras.Model(inputs=inputs, outputs=output)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=[tf.keras.metrics.BinaryAccuracy(name="accuracy"), tf.keras.metrics.AUC(name="auc")],
    )
    return model


def _without_autograph(model):
    """Keras steps traced as plain Python: AutoGraph converting Keras' train and test steps
    and every layer they call took 16-23 s of a 28 s Trainer on this machine, for code
    without tensor-dependent Python control flow (the steps run the same ops either way)."""
    model.train_step = tf.autograph.experimental.do_not_convert(model.train_step)
    model.test_step = tf.autograph.experimental.do_not_convert(model.test_step)
    return model


def _input_fn(file_pattern, data_accessor, tf_transform_output, batch_size):
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=schema.LABEL),
        tf_transform_output.transformed_metadata.schema,
    ).repeat()


def _raw_serving_fn(model, tf_transform_output):
    """serving_default: raw named inputs (one value per trip each) -> tip probability."""
    model.tft_layer = tf_transform_output.transform_features_layer()
    dtypes = {"FP32": tf.float32, "INT64": tf.int64, "BYTES": tf.string}
    spec = {
        name: tf.TensorSpec(shape=[None], dtype=dtypes[dt], name=name)
        for name, dt in schema.SERVING_DTYPES.items()
    }

    @tf.function(input_signature=[spec], autograph=False)  # as _without_autograph
    def serve(features):
        # The schema has fixed-length features of shape [1] (the CSV has no gaps).
        transformed = model.tft_layer({k: tf.reshape(v, [-1, 1]) for k, v in features.items()})
        transformed = {k: tf.reshape(v, [-1, 1]) for k, v in transformed.items() if k != schema.LABEL}
        return {"tip_probability": tf.reshape(model(transformed), [-1])}

    return serve


def _tf_example_serving_fn(model, tf_transform_output):
    """serving_tf_example: serialized tf.Example -> probability (what TFMA evaluates)."""
    model.tft_layer_eval = tf_transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")], autograph=False)
    def serve(serialized):
        feature_spec = tf_transform_output.raw_feature_spec()
        # Neither the label nor the Evaluator's slice-only columns are inputs.
        for name in [schema.LABEL] + slicing.SLICE_COLUMNS:
            feature_spec.pop(name, None)
        raw = tf.io.parse_example(serialized, feature_spec)
        transformed = model.tft_layer_eval(raw)
        transformed = {k: tf.reshape(v, [-1, 1]) for k, v in transformed.items() if k != schema.LABEL}
        return {"outputs": model(transformed)}

    return serve


def run_fn(fn_args: FnArgs):
    hp = fn_args.custom_config or {}
    tf.keras.utils.set_random_seed(int(hp.get("seed", 42)))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    batch_size = int(hp.get("batch_size", 64))
    # The pipeline's family picks the hyper-parameters; the defaults are the dnn's.
    family = str(hp.get("family", "dnn"))
    hidden_units = [int(u) for u in hp.get("hidden_units", [64, 32])]
    learning_rate = float(hp.get("learning_rate", 0.001))
    train = _input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    evals = _input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size)
    model = _without_autograph(_build_model(tf_transform_output, hidden_units, learning_rate))
    epochs = int(hp.get("epochs", 5))
    history = model.fit(
        train,
        steps_per_epoch=max(1, fn_args.train_steps // epochs),
        epochs=epochs,
        validation_data=evals,
        validation_steps=fn_args.eval_steps,
        verbose=2,
    )
    signatures = {
        "serving_default": _raw_serving_fn(model, tf_transform_output).get_concrete_function(),
        "serving_tf_example": _tf_example_serving_fn(model, tf_transform_output).get_concrete_function(),
    }
    # Only the signatures are served (model server, TFMA as tf_generic, the MLflow Model):
    # no Keras layer traces, which cost another trace of every layer.
    model.save(fn_args.serving_model_dir, save_format="tf", signatures=signatures, save_traces=False)
    # Training curves and parameters (the family among them, which the MlflowLogger tags the
    # run and the registered version with) for the MLflow logger downstream; ModelRun is the
    # Trainer's scratch space.
    os.makedirs(fn_args.model_run_dir, exist_ok=True)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
        json.dump({"history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
                   "params": {"family": family, "batch_size": batch_size, "epochs": epochs,
                              "hidden_units": hidden_units, "learning_rate": learning_rate,
                              "train_steps": fn_args.train_steps, "eval_steps": fn_args.eval_steps}}, f)
