"""What each image cost, and spend budgets (issue 33; docs/billing.md).

``spec`` holds the compiled config values, ``price`` the pure cost arithmetic, ``usage``
the ``usage`` object and ``X-Router-Usage`` header an answer carries; ``budget`` the
windows' pure arithmetic, ``gate`` the reservations and settlements at the gateway;
``accounts`` reads windows and the ledger for operators and credits, ``tally`` counts
this replica's spend and decisions, ``census`` keeps the store's figures for the metrics
and the status page.
"""
