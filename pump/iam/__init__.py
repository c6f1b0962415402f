"""Compatibility with iam (marmotedu/iam): its records and iam-pump's config.

``collector-pump`` replaces iam-pump beside an unchanged iam-authz-server:

- :mod:`pump.iam.record`: iam-authz-server's ``AnalyticsRecord`` as it
  arrives (msgpack v5 of a Go struct: the Go field names as keys,
  ``ExpireAt`` a msgpack timestamp) becomes the record iam-pump decodes
  and stores: ``timestamp, username, effect, conclusion, request, policies,
  deciders, expireAt``.
- :mod:`pump.iam.config`: iam-pump's own ``iam-pump.yaml`` read into this
  pump's config, key by key, with one warning per key that has no equivalent.

The file sink's ``csv_style: iam`` (``pump/sinks/_iamcsv.py``) writes iam-pump's
csv files: its header, its cell text and one file per hour.
"""
