"""Transformations: profile → Stripe payload, in three languages.

``mapping`` (Jinja2 expressions), ``python`` and ``javascript`` (Duktape in worker processes)
implement the ``Transformer`` protocol of ``base``; ``build`` picks one from a spec's
transformation; ``run`` applies it to a stream of profiles with the export's matching settings;
``validate`` checks every output against what Stripe accepts (nested objects flattened first).
"""
