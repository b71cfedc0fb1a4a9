"""beam_tuning against the real Beam of the TFX environment: the same specs as Beam's own
introspection, asked once per class, and pipelines with side inputs and user state still
right with the state cache off."""

import types
import unittest

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer

from taxi_mlops.pipeline import beam_tuning

beam_tuning.install()

BAG = BagStateSpec("seen", beam.coders.VarIntCoder())
TIMER = TimerSpec("flush", userstate.TimeDomain.WATERMARK)


class Plain(beam.DoFn):
    def process(self, element):
        yield element


class Stateful(beam.DoFn):
    def process(self, element, seen=beam.DoFn.StateParam(BAG)):
        key, value = element
        seen.add(value)
        yield key, sorted(seen.read())


class WithTimer(beam.DoFn):
    def process(self, element, flush=beam.DoFn.TimerParam(TIMER)):
        yield element

    @on_timer(TIMER)
    def on_flush(self):
        return []


def _stateful_process(self, element, seen=beam.DoFn.StateParam(BAG)):
    yield element


class GetDofnSpecsTest(unittest.TestCase):
    def setUp(self):
        self.calls = []
        original = self.beams = beam_tuning._original

        def counting(dofn):
            self.calls.append(type(dofn))
            return original(dofn)

        beam_tuning._original = counting
        beam_tuning._specs.clear()
        self.addCleanup(setattr, beam_tuning, "_original", original)

    def test_installed_in_place_of_beams(self):
        self.assertIs(userstate.get_dofn_specs, beam_tuning._get_dofn_specs)
        self.assertFalse(beam_tuning.install())  # idempotent

    def test_the_same_specs_as_beam_asked_once_per_class(self):
        for cls in (Plain, Stateful, WithTimer):
            expected = self.beams(cls())
            for _ in range(3):
                self.assertEqual(userstate.get_dofn_specs(cls()), expected)
        self.assertEqual(self.calls, [Plain, Stateful, WithTimer])
        self.assertEqual(userstate.get_dofn_specs(Stateful())[0], {BAG})
        self.assertEqual(userstate.get_dofn_specs(WithTimer())[1], {TIMER})

    def test_callers_get_their_own_sets(self):
        states, _ = userstate.get_dofn_specs(Stateful())
        states.clear()
        self.assertEqual(userstate.get_dofn_specs(Stateful())[0], {BAG})

    def test_an_instance_with_its_own_bound_method_is_asked_every_time(self):
        self.assertEqual(userstate.get_dofn_specs(Plain()), (set(), set()))
        odd = Plain()
        odd.process = types.MethodType(_stateful_process, odd)
        self.assertEqual(userstate.get_dofn_specs(odd)[0], {BAG})
        self.assertTrue(userstate.is_stateful_dofn(odd))
        self.assertFalse(userstate.is_stateful_dofn(Plain()))


class PipelinesTest(unittest.TestCase):
    def test_side_inputs_and_user_state_with_the_state_cache_off(self):
        self.assertEqual(worker_handlers.STATE_CACHE_SIZE_MB, 0)
        with beam.Pipeline() as p:
            side = p | "side" >> beam.Create([10, 20])
            plus = (p | "main" >> beam.Create([1, 2, 3])
                    | beam.Map(lambda x, s: x + sum(s), s=beam.pvalue.AsList(side)))
            assert_that(plus, equal_to([31, 32, 33]), label="side input")
            seen = (p | "pairs" >> beam.Create([("a", 1), ("a", 2), ("b", 5)])
                    | beam.ParDo(Stateful()))
            assert_that(seen | beam.combiners.Count.PerKey(),
                        equal_to([("a", 2), ("b", 1)]), label="state")


if __name__ == "__main__":
    unittest.main()
