"""The benchmark harness: the registry at N agents, measured against its targets (``report.TARGETS``).

``python -m bench`` (or ``python bench/run.py``); ``--help`` lists the parameters.
"""
