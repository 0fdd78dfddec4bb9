"""Ground floor: what every layer uses and nothing owns. Atomic files and directories
(a reader never sees half a file) and the checks config sections run on their values.

May import: nothing
"""
