"""The checks that the plugins of the ``ecosystem`` extra work with script items.

A package, so that its conftest is ``ecosystem.conftest`` and never stands in for the
``conftest`` module the other test files import their helpers from.
"""
