"""Two fixed costs of Beam's in-process runner, removed before the pipeline runs.

Measured with py-spy over a cold pipeline run on this machine (2 cores), they were about an
eighth of the Beam components' time, and neither does any work for our pipelines:

* **The state cache's size accounting.** The embedded worker caches side inputs in a 100 MB
  LRU cache and weighs every value it loads with ``objsize``, which first walks the globals of
  every imported module so as not to count them (TF, TFX and Beam: tens of thousands of
  objects) - per side input read, whatever its size. Our side inputs (tf.Transform's analyzer
  results, TFMA's and the file sinks' small lists) are read once per bundle, and every stage
  is one bundle here, so the cache never hits. ``STATE_CACHE_SIZE_MB = 0`` turns it off; side
  inputs are then read straight from the runner's in-memory state.
* **DoFn introspection per stage.** Building each stage's bundle processor calls
  ``userstate.get_dofn_specs`` several times per DoFn, which takes ``inspect.signature`` of
  every method of the DoFn (dozens, via ``dir``). tf.Transform's and TFMA's pipelines have many
  stages built from the same few DoFn classes. The specs come from the methods' default
  arguments, so they are the same for every instance of a class: they are kept per class,
  except for an instance that carries bound methods of its own (asked every time).

Both are process-wide and idempotent; ``install`` is called by ``pipeline.run`` before any
Beam pipeline is built, and only the TFX environment imports this module.
"""

from __future__ import annotations

import types

_original = None  # Beam's get_dofn_specs, once install() has replaced it
_specs: dict = {}  # DoFn class -> (state specs, timer specs)


def _per_class(dofn) -> bool:
    """get_dofn_specs reads the bound methods it finds on the DoFn: the class's, unless the
    instance carries some of its own (a plain function assigned to an instance, as beam.Map
    does, is not a method to it either way)."""
    return not any(isinstance(value, types.MethodType)
                   for value in getattr(dofn, "__dict__", {}).values())


def install() -> bool:
    """Apply both changes; False if already applied."""
    global _original
    if _original is not None:
        return False
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.transforms import userstate

    worker_handlers.STATE_CACHE_SIZE_MB = 0
    _original = userstate.get_dofn_specs
    userstate.get_dofn_specs = _get_dofn_specs
    return True


def _get_dofn_specs(dofn):
    if not _per_class(dofn):
        return _original(dofn)
    specs = _specs.get(type(dofn))
    if specs is None:
        specs = _specs[type(dofn)] = _original(dofn)
    return set(specs[0]), set(specs[1])  # the caller's own sets, as from Beam
