"""The conformance suite: every engine, one set of answers."""
