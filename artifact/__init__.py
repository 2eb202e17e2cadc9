"""The artifact contract, shared by the pipeline (which writes artifacts), the service (which loads
one) and the controller (which checks them before a release). It imports no training code.

- :mod:`artifact.manifest`: the manifest schema and reading it (``format_version`` checked);
- :mod:`artifact.trust`: verifying the model file against the manifest, then loading those bytes;
- :mod:`artifact.registry`: ``models/<name>/<version>``, resolving versions, atomic writes;
- :mod:`artifact.rules`, :mod:`artifact.linear`: the model classes that pickles refer to.
"""
