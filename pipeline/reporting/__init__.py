"""The reporting side (docs/design.md#reports-and-alerts): what the reporter program and ``bin/report`` are built from.

``figures`` computes a day's numbers by SQL, ``ledger`` is the ``reports`` table (each day sent
once), ``alerts`` finds failures and stuck jobs and keeps the ``alerts`` table, ``render`` turns
figures into email bodies, and ``mail`` sends them.
"""
