"""Offline jobs that build and refresh a PRM: generate, annotate, filter, synth, train, evaluate."""
