"""The front door: the ``splatpack`` command, the REST client and the demo.

Imports every other room (codec, infra, workers, service); nothing imports it.
"""
