"""The ground layer: what every stage may import, and which imports nothing else of fsmtl.

errors (FsmtlError, exit codes), file I/O (atomic writes, safe checkpoint loading), optional
imports, and the command-line helpers every stage's CLI shares.
"""
