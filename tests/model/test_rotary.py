"""Rotary positions: the per-position matrix is the same rotation as the cos/sin form, it
preserves lengths, and a query-key score depends only on their distance (what makes left
padding and the KV cache's re-prefill exact)."""

import torch

from tinylm.model.rotary import Rotary, rotary_cos_sin, rotation_matrices


def _tables(n: int, d: int = 16):
    return rotary_cos_sin(torch.arange(n), d, 10000.0, torch.float64)


def test_matrix_form_equals_the_cos_sin_form():
    cos, sin = _tables(12)
    qk = torch.randn(2, 12, 3, 16, dtype=torch.float64)  # (B, T, q heads + k heads, D)
    q, k = Rotary(cos, sin)(qk, 2)
    mats = rotation_matrices(cos, sin)
    for t in range(12):
        one = Rotary(None, None, mats[t])(qk[:, t:t + 1], 2)
        torch.testing.assert_close(one[0], q[:, :, t:t + 1])
        torch.testing.assert_close(one[1], k[:, :, t:t + 1])
        eye = torch.eye(16, dtype=torch.float64)
        torch.testing.assert_close(mats[t] @ mats[t].T, eye)  # a rotation: lengths kept


def test_scores_depend_on_relative_position_only():
    cos, sin = _tables(40)
    m = rotation_matrices(cos, sin)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    for shift in (1, 7, 20):  # the same pair of tokens, moved together
        torch.testing.assert_close((q @ m[10]) @ (k @ m[3]), (q @ m[10 + shift]) @ (k @ m[3 + shift]),
                                   rtol=1e-5, atol=1e-6)  # the tables are computed in fp32
    assert abs((q @ m[10]) @ (k @ m[3]) - (q @ m[10]) @ (k @ m[4])) > 1e-3  # distance matters
