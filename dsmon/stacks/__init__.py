"""Python stacks of a target, through py-spy: one runner (pyspy), one aggregation (profile),
one background sampler for diagnose (sampler) and the agent's evidence store (capture)."""
