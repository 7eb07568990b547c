"""The analyzer contract every analyzer gets from analyzers.base.Analyzer."""

import inspect

import pytest

from geomsteer.analyzers.clustering import ClusterAnalyzer
from geomsteer.analyzers.hierarchy import HierarchyAnalyzer
from geomsteer.analyzers.similarity import FeatureMatcher, SimilarityAnalyzer
from geomsteer.analyzers.steering import SteeringDecomposition, SteeringPropagation, SteeringSweep
from geomsteer.analyzers.topology import MapperAnalyzer
from geomsteer.errors import NotFittedError

ALL = [HierarchyAnalyzer, SimilarityAnalyzer, FeatureMatcher, SteeringSweep, SteeringDecomposition,
       SteeringPropagation, MapperAnalyzer, ClusterAnalyzer]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_params_come_from_init_and_result_before_fit_says_how_to_fit(cls):
    a = cls()
    params = a.get_params()
    init = [n for n in inspect.signature(cls.__init__).parameters if n != "self" and n not in cls._not_params]
    assert set(params) == set(init)
    assert repr(a) == f"{cls.__name__}()"  # nothing differs from the defaults
    with pytest.raises(NotFittedError, match=rf"^this {cls.__name__} is not fitted yet: call fit\(.*\) first$"):
        a.result()


def test_repr_and_params_show_what_was_set():
    a = MapperAnalyzer(n_cubes=12, features=(3, 4))
    assert repr(a) == "MapperAnalyzer(features=(3, 4), n_cubes=12)"
    assert a.get_params()["features"] == [3, 4]  # tuples as result.json shows them
    assert HierarchyAnalyzer(seed=7).get_params()["seed"] == 7 and "progress" not in HierarchyAnalyzer().get_params()
