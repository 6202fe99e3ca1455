"""Grouped K/V heads reach torch's variable-length kernel as they are where it takes them (``enable_gqa``, or
natively), repeated where it does not; the outputs are the same either way. The kernel needs CUDA, so these
tests put stand-ins with each calling convention in place of ``torch.nn.attention.varlen.varlen_attn``."""

import logging

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from vlaser.model.packed_attention import _load_varlen

HEADS, KV_HEADS, DIM = 6, 2, 8
BOUNDS = [0, 5, 12, 16]  # three samples over 16 flattened tokens


def _reference(query, key, value, cu, scale):
    """Causal attention within each sample, K/V heads repeated up front."""
    key, value = (x.repeat_interleave(query.shape[1] // x.shape[1], dim=1) for x in (key, value))
    out = torch.empty_like(query)
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (x[start:end].transpose(0, 1) for x in (query, key, value))
        out[start:end] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(0, 1)
    return out


def _stand_in(grouped: str, seen: list):
    """A ``varlen_attn`` that has ``enable_gqa`` (``"flag"``), takes fewer K/V heads without it (``"native"``),
    refuses them (``"refuses"``), or takes them and computes something else (``"wrong"``)."""
    def check(query, key, enable_gqa: bool):
        seen.append(key.shape[1])
        if key.shape[1] != query.shape[1] and not enable_gqa and grouped in ("flag", "refuses"):
            raise ValueError(f"Expect query and key/value to have the same number of heads but got "
                             f"Hq={query.shape[1]} and Hkv={key.shape[1]}")

    def attend(query, key, value, cu_q, scale):
        if grouped == "wrong" and key.shape[1] != query.shape[1]:
            key, value = (x[:, :1].expand(-1, query.shape[1], -1) for x in (key, value))
        return _reference(query, key, value, cu_q, scale)

    if grouped == "flag":
        def varlen_attn(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                        enable_gqa=False):
            check(query, key, enable_gqa)
            return attend(query, key, value, cu_q, scale)
    else:
        def varlen_attn(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
            check(query, key, False)
            return attend(query, key, value, cu_q, scale)
    return varlen_attn


@pytest.mark.parametrize(("grouped", "takes"), [("flag", True), ("native", True), ("refuses", False),
                                                ("wrong", False)])
def test_grouped_heads_reach_the_kernel_only_where_it_takes_them_with_equal_outputs(monkeypatch, caplog, grouped,
                                                                                    takes):
    import torch.nn.attention.varlen as varlen

    seen: list[int] = []
    monkeypatch.setattr(varlen, "varlen_attn", _stand_in(grouped, seen))
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(BOUNDS[-1], h, DIM, generator=gen) for h in (HEADS, KV_HEADS, KV_HEADS))
    cu = torch.tensor(BOUNDS, dtype=torch.int32)
    want = _reference(query, key, value, cu, 0.3)
    attend = _load_varlen()
    with caplog.at_level(logging.INFO, logger="vlaser.model.packed_attention"):
        outs = [attend(query, key, value, cu, 7, 0.3) for _ in range(3)]
    assert all(torch.equal(out, want) for out in outs)
    assert seen[-2:] == [KV_HEADS if takes else HEADS] * 2  # the calls after the first: grouped, or repeated
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1  # decided once, on the first call
    if takes:
        assert messages[0].endswith("takes grouped K/V heads (%s)" % ("enable_gqa" if grouped == "flag"
                                                                        else "natively"))
    else:
        assert "cannot take grouped K/V heads" in messages[0] and messages[0].endswith("; they are repeated")
    assert attend(query, key.repeat_interleave(3, 1), value.repeat_interleave(3, 1), cu, 7, 0.3).equal(want)
    assert seen[-1] == HEADS  # as many K/V heads as query heads: passed as they are
