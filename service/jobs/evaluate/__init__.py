"""`prm eval`: ProcessBench (earliest-error F1) and best-of-N, scored by the service's own engine in process."""
