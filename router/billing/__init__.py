"""What each image cost, and spend budgets (issue 33; docs/billing.md).

``spec`` holds the compiled config values, ``price`` the pure cost arithmetic, ``usage``
the ``usage`` object and ``X-Router-Usage`` header an answer carries.
"""
