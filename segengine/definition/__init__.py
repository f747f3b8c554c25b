"""Segment definitions: the rule tree, parsing with locations, validation, rewrites."""
