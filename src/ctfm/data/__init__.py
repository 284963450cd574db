"""Benchmark data: the synthetic phantom benchmark (synth, phantom), its validator (check), the hub download."""
