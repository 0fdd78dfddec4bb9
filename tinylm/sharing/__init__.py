"""Weight sharing, the reason tinylm exists: the tie toolkit (one Parameter in two places, SAME
or TRANSPOSE, checked after every lifecycle step) and weight copying with a report (copies,
never ties). Works on any ``nn.Module``, so it knows no model.

May import: nothing
"""
