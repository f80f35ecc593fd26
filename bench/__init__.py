"""The benchmark harness: the registry at N agents, measured against the targets of issue 7.

``python -m bench`` (or ``python bench/run.py``); ``--help`` lists the parameters.
"""
