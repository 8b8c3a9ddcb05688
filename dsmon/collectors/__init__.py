"""Collectors: each module reads one source and parses it with a pure `parse_*` function."""
