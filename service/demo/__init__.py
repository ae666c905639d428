"""Embedded demo model: synthetic shapes data, ``DemoNet`` and its training.

Submodules: :mod:`service.demo.data` (generator, on-disk format, torch
dataset), :mod:`service.demo.model` (architecture, normalisation constants)
and :mod:`service.demo.train` (training, evaluation, loading the shipped
weights ``demo_cnn.safetensors``).
"""
