"""The recorder's child side: put on a script's ``PYTHONPATH`` (cold) or compiled by the
warm-start server; see :mod:`pytest_codomyrmex_exec.engine.recorder`."""
