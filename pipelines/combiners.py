"""One generic CombineFn over Beam-free accumulators (as tensorflow-transform keeps the numeric
combiner math in plain code and wraps it once).

An accumulator has `merge(other)` that folds `other` into itself and leaves `other` untouched
(Beam's combiner-lifting contract: merge_accumulators may mutate only the first accumulator);
`add` and `extract` say how a value goes in and what comes out. The arithmetic (commer.metrics'
Aggregate and Distribution, pipelines.profile_accumulator's ProfileAccumulator) is tested without Beam.
"""
from __future__ import annotations

from typing import Callable

import apache_beam as beam


def _add(accumulator, value):
    return accumulator.add(value)


def _summary(accumulator):
    return accumulator.summary()


class AccumulatorFn(beam.CombineFn):
    def __init__(self, create: Callable, add: Callable = _add, extract: Callable = _summary):
        self.create, self.add, self.extract = create, add, extract

    def create_accumulator(self):
        return self.create()

    def add_input(self, accumulator, value):
        return self.add(accumulator, value)

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)
        for other in accumulators:
            first.merge(other)  # mutates only the first accumulator
        return first

    def extract_output(self, accumulator):
        return self.extract(accumulator)


def unchanged(accumulator):
    """extract for accumulators that are themselves the result (e.g. ProfileAccumulator)."""
    return accumulator
