"""merlib: reproducible companion to the CMC 2023 GIA+BIA+Bi-LSTM micro-expression paper."""
__version__ = "0.1.0"
