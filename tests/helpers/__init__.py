"""Builders and checks the tests share (no tests here): the CLI's contract, the tiny model and its scene, COCO
data and metric models for the evaluation, tiny SAM and OWLv2. Importable as ``helpers`` (pyproject's
``pythonpath``)."""
