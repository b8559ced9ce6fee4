"""Transformations: profile → flat Stripe payload.

``mapping`` (Jinja2 expressions) lives here; ``run`` applies any transformation to a stream of
profiles, with the export's matching rules.
"""
