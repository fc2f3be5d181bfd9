"""hookscope's tests, a package so that helper modules import by their full
name (``from tests.collector.harness import ...``) under pytest's
``--import-mode=importlib`` (pyproject.toml), with no sys.path edits; what
every tier shares (waiting on a condition, real nats-servers, the pipeline's
wiring) lives in :mod:`tests.helpers`."""
