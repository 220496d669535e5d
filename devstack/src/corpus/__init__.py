"""DICOM test and demo corpora (distribution ``himig-devstack``): the bundled sample, synthetic studies and
hostile files, each with a manifest stating what a correct migration concludes about every file.

May import: `contracts` and `activities.validate` (a corpus states the verdicts the pipeline must reach).
"""
