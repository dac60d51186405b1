"""Conformance suites, one module per plugin kind: a plugin's tests subclass one and declare a fixture.

The suites are plain pytest classes (LangChain's standard-tests pattern): a new plugin gets
the shared checks of its kind by declaring one class in its own tests.
"""
