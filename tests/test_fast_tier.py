"""make test-fast's selection (tests/helpers/durations.py): pure parts."""
from tests.helpers import durations


def test_parse_sums_setup_call_and_teardown_per_test():
    report = ["============ slowest durations ============",
              "1.50s setup    tests/a/test_x.py::test_one",
              "0.25s call     tests/a/test_x.py::test_one",
              "0.01s teardown tests/a/test_x.py::test_one",
              "0.02s call     tests/b/test_y.py::test_two[p-1]",
              "(3 durations < 0.005s hidden.  Use -vv to show these durations.)"]
    assert durations.parse(report) == {"tests/a/test_x.py::test_one": 1.76,
                                       "tests/b/test_y.py::test_two[p-1]": 0.02}


def test_the_recorded_file_names_only_slow_tests_that_exist_as_ids():
    slow = durations.slow_ids()
    assert slow and all("::" in t and t.startswith("tests/") for t in slow)
    assert durations.slow_ids(durations.FILE.with_name("no-such-file.json")) == set()
