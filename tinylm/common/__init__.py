"""Ground floor: what every layer uses and nothing owns. Atomic files and directories
(a reader never sees half a file), the checks config sections run on their values, and
safetensors headers checked against their files before anything is read.

May import: nothing
"""
