"""Decision: features, ranking, rules and experiments."""
