"""tests/mutants.py stays runnable: every listed mutant still applies to the source and changes one line.

The pass itself (each mutant killed by its tests) takes tens of minutes and runs by hand:
``python tests/mutants.py``. This check keeps its list from going stale as the code moves.
"""

import mutants
import pytest


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda m: m.key)
def test_each_mutant_applies_and_changes_exactly_one_line(mutant):
    source = (mutants.ROOT / mutant.path).read_text()
    mutated = mutants._apply(source, mutant)
    assert mutated is not None, f"{mutant.key}: its line is no longer in {mutant.path}; update tests/mutants.py"
    before, after = source.splitlines(), mutated.splitlines()
    assert len(before) == len(after)
    assert sum(a != b for a, b in zip(before, after)) == 1


def test_keys_are_unique_and_tests_exist():
    keys = [m.key for m in mutants.MUTANTS]
    assert len(keys) == len(set(keys))
    for m in mutants.MUTANTS:
        files = [t for t in m.tests if t.endswith(".py")]
        assert files and all((mutants.ROOT / f).is_file() for f in files), m.key
