"""What the operator writes: routes.yaml's typed model and loader, units, path rules, log set-up.

The bottom layer: it imports nothing else of `proxy`. Everything above (and `shadow/`) reads
the frozen `proxy.config.spec` types it produces.
"""
