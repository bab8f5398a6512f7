"""Offline jobs that build and refresh a PRM: generate, annotate, filter, synth, train, evaluate.

They share the served model's formatting, checkpoint loading and packed scorer (service.prm), and the
store (service.store), so what they train and measure is exactly what `prm serve` serves; they never
import the HTTP layer or the runtime. `inputs.py` reads their input files; `cli.py` is their commands.
"""
