"""Transposed ties: a tied autoencoder's decoder computes with the encoder's matrix."""

import copy

import torch
from torch.func import functional_call

from tinylm.model.autoencoder import TiedAutoencoder
from tinylm.sharing.tying import check_ties, tied_groups

ORIGINAL = "decoder.parametrizations.weight.original"


def test_decoder_holds_no_weight_of_its_own():
    ae = TiedAutoencoder(6, 3)
    assert ae.decoder.parametrizations.weight.original is ae.encoder.weight
    assert torch.equal(ae.decoder.weight, ae.encoder.weight.T)
    assert tied_groups(ae) == [[ORIGINAL, "encoder.weight"]]
    assert sum(p.numel() for p in ae.parameters()) == 6 * 3 + 3 + 6


def test_transposed_grad_equals_untied_reference_sum():
    torch.manual_seed(0)
    ae, x = TiedAutoencoder(6, 3), torch.randn(5, 6)
    # untied reference: an independent decoder matrix holding the same values as W.T
    W = ae.encoder.weight.detach()
    ref = {"encoder.weight": W.clone().requires_grad_(True),
           "encoder.bias": ae.encoder.bias.detach().clone().requires_grad_(True),
           "decoder.bias": ae.decoder.bias.detach().clone().requires_grad_(True)}
    dec_w = W.T.clone().requires_grad_(True)

    def ref_forward(p):
        h = torch.tanh(x @ p["encoder.weight"].T + p["encoder.bias"])
        return h @ dec_w.T + p["decoder.bias"]

    ((ref_forward(ref) - x) ** 2).mean().backward()
    ((ae(x) - x) ** 2).mean().backward()
    torch.testing.assert_close(ae.encoder.weight.grad, ref["encoder.weight"].grad + dec_w.grad.T)
    assert not torch.allclose(ae.encoder.weight.grad, ref["encoder.weight"].grad)


def test_transposed_tie_survives_copy_load_and_to():
    ae = TiedAutoencoder(6, 3)
    clone = copy.deepcopy(ae)
    assert clone.decoder.parametrizations.weight.original is clone.encoder.weight
    assert clone.encoder.weight is not ae.encoder.weight
    for assign in (False, True):
        ae.load_state_dict(clone.state_dict(), assign=assign)
        check_ties(ae)
        assert ae.decoder.parametrizations.weight.original is ae.encoder.weight
    ae.to(torch.float64)
    check_ties(ae)
    assert ae.decoder.weight.dtype == torch.float64
    # functional_call sees one name for the shared matrix when tie_weights is on (default)
    out = functional_call(ae, dict(ae.named_parameters()), (torch.randn(2, 6, dtype=torch.float64),))
    assert out.shape == (2, 6)
