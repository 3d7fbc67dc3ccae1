"""count_flops against multiply-adds counted by hand for a small network (fvcore's rules)."""

import torch
import torch.nn.functional as F
from torch import nn

from stts.flops import count_flops, count_params


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, (3, 7, 7), (2, 4, 4), (1, 3, 3))
        self.norm = nn.LayerNorm(8)
        self.plain_norm = nn.LayerNorm(16, elementwise_affine=False)
        self.fc = nn.Linear(8, 16)
        self.dw = nn.Conv3d(16, 16, 3, padding=1, groups=16, bias=False)
        self.selectors = nn.ModuleDict({"T0": nn.Linear(16, 4)})

    def forward(self, x):
        x = self.conv(x)  # (1, 8, 4, 8, 8)
        x = x.flatten(2).transpose(1, 2)  # (1, 256, 8)
        x = self.fc(self.norm(x))  # (1, 256, 16)
        x = self.plain_norm(x)
        q = x.view(1, 2, 256, 8)
        attn = F.scaled_dot_product_attention(q, q, q)
        gram = torch.einsum("bnc,bmc->bnm", x, x)
        dw = self.dw(x.transpose(1, 2).reshape(1, 16, 4, 8, 8))
        return self.selectors["T0"](x).sum() + gram.sum() + dw.sum() + attn.sum() + F.gelu(x).sum()


def test_counts_match_hand_count():
    model = Toy().train()
    fc = count_flops(model, (1, 3, 8, 32, 32))
    by_hand = {
        "conv": 8 * 3 * 3 * 7 * 7 * (4 * 8 * 8) + 16 * 27 * 256,  # batch * prod(w) * prod(out spatial)
        "layer_norm": 256 * 8 * 5 + 256 * 16 * 4,  # 5 per element with affine, 4 without
        "linear": 256 * 8 * 16 + 256 * 16 * 4,
        "matmul": 2 * 256 * 256 * (8 + 8) + 256 * 16 * 256,  # SDPA as two matmuls; einsum as bmm
    }
    assert fc.by_operator == by_hand
    assert fc.total == sum(by_hand.values())
    assert fc.by_module["selectors.T0"] == 256 * 16 * 4
    assert fc.scorer_gflops == 256 * 16 * 4 / 1e9
    assert model.training  # mode restored
    assert model.fc.weight.device.type == "cpu"  # the model itself never moved to meta


def test_count_params():
    assert count_params(nn.Linear(3, 4)) == 16
