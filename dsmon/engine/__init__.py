"""The rules engine: features over windows, rules as data, findings with evidence."""
