"""The jobs a user starts, one module each.

A recipe loads its configs once, checks what it can before work starts, composes components
(everything else under ``kanitts``: they take typed objects, never config folders), prints
progress and a summary, and returns an exit code. ``kanitts.cli`` only parses the command line
and calls one recipe; tests and notebooks call recipes the same way.
"""
