"""What the ``noduleflow`` commands (:mod:`services.cli`, :mod:`services.demo`) need beyond
the services themselves: the C-STORE client of ``send``/``demo`` (:mod:`.scu`) and the table
of ``jobs`` (:mod:`.jobs_view`).

Not a service: it may import :mod:`services.core`; no service imports it.
"""
