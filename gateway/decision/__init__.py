"""Decision: features, ranking, rules, experiments, and the flow that turns moments into actions."""
