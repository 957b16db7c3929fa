"""Benchmarks of the persistence kit, each set against its raw limit measured in the same run.

``python -m bench.run [--quick] [--only NAME,...]`` (or ``invoke bench``) writes
``bench/results.json`` and ``bench/results.md``. One module or package per benchmark;
``run.py`` orchestrates, ``report/`` formats.
"""
