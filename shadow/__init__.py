"""Shadow traffic: mirroring, comparison, diff store and the promotion gate.

Code below the mirror (diff, noise, redaction, store, gate) needs no aiohttp and is tested with
plain values.
"""
