"""Detector families as European XFEL records them: one module per family.

Each module holds the family's layout facts (source-name templates, aggregators,
module numbering), its gain encoding and gain-mode vocabularies, and its geometry,
so that the simulator, the readers and the calibration share one definition.
"""
