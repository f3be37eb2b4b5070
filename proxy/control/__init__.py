"""The control plane: what the weights are, who changed them, and whether to promote.

`runtime` owns the live state (`state`, `audit`, `recovery`), `controller` runs the gate,
`flags_link`/`unleash` keep weights in Unleash, `planes` pushes tables to the data planes,
`aggregate` sums their counters, `notify` and `reconcile` report outward. Depends on
`proxy.dataplane`, `proxy.config` and `shadow`, never on the interfaces above it.
"""
